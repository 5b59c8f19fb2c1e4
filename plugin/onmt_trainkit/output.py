"""Where an average is written, and how it reaches its output directory without losing a file.

The average is written into a *staging directory* beside the output directory (in the same
parent, so that a rename moves it), named after the process that writes it::

    .<output name>.averaging-<process id>.<PID namespace>@<host>-<8 hex digits>

The PID namespace is the inode number of ``/proc/self/ns/pid`` (on Linux; ``0`` on systems
without PID namespaces), so that two containers that share a host name (host networking) but
not their process ids never take each other's process for their own.

Then:

- a new output directory is the staging directory renamed (a remote file system, which has
  no directory rename, gets the files one by one, the ``checkpoint`` file last);
- into an existing one (``--force``, and always for ``onmt-main average_checkpoints``), the
  checkpoint is *added*, as stock OpenNMT-tf adds it: its files are moved in, then the
  ``checkpoint`` file is replaced by one that lists the checkpoints it listed and the new one,
  last (the latest). When a checkpoint of the same name is listed (an average replaced), the
  ``checkpoint`` file is first replaced, atomically, by one that no longer lists it (or removed
  if it listed nothing else), so a crash while its files are moved leaves a ``checkpoint`` file
  that lists only complete checkpoints. No other file is touched. A checkpoint of the same name
  (``ckpt-<step>``) and ``model_description.py`` are replaced only if the directory holds
  nothing but averages (checkpoint files, ``checkpoint``, ``model_description.py``); otherwise
  the request is refused, naming the file that would be lost.

A run that dies leaves its staging directory; the next run into the same parent removes the
staging directories of this host's and this PID namespace's processes that no longer run, and
says so. Other staging directories are kept: another host's or namespace's, and those whose
name has no namespace (written before it was part of the name, or on a Linux system without
``/proc``), since whether their process still runs cannot be known here.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from onmt_trainkit import checkpoint_state, storage

STATE_FILE = "checkpoint"
MODEL_DESCRIPTION = "model_description.py"
AVERAGE_FILE = re.compile(r"^ckpt-\d+\.(?:index|data-\d{5}-of-\d{5})$")
"""The checkpoint files that an average holds (beside ``checkpoint`` and ``model_description.py``)."""

STAGING = re.compile(
    r"^\.(?P<output>.+)\.averaging-(?P<pid>\d+)(?:\.(?P<namespace>\d+))?@(?P<host>.+)-(?P<token>[0-9a-f]{8})$"
)


class OutputError(ValueError):
    """An output directory that the averager refuses to write into; nothing has been written."""


def host_name() -> str:
    """Returns this machine's name as staging directories spell it."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "localhost"


def pid_namespace() -> str | None:
    """Returns this process's PID namespace as staging directories spell it: the inode number
    of ``/proc/self/ns/pid``; ``"0"`` where there are no PID namespaces (not Linux); ``None``
    on a Linux system that does not tell (no ``/proc``)."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return None if sys.platform.startswith("linux") else "0"


def process_running(pid: int) -> bool:
    """Returns ``True`` unless process ``pid`` of this host certainly no longer runs."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def make_staging(output_dir: str) -> str:
    """Creates and returns a new staging directory for ``output_dir``, beside it.

    Raises:
      StorageError: naming ``output_dir``, if its parent cannot be written.
    """
    parent, name = storage.split(output_dir)
    namespace = pid_namespace()
    owner = f"{os.getpid()}" if namespace is None else f"{os.getpid()}.{namespace}"
    with writing(output_dir):
        storage.makedirs(parent)
        while True:
            path = storage.join(parent, f".{name}.averaging-{owner}@{host_name()}-{secrets.token_hex(4)}")
            if storage.exists(path):
                continue
            try:
                storage.mkdir(path)
                return path
            except FileExistsError:
                continue


@contextlib.contextmanager
def writing(output_dir: str) -> Iterator[None]:
    """Turns a failure to write (an ``OSError``) into a :class:`storage.StorageError` that names
    ``output_dir`` rather than the hidden staging directory beside it."""
    try:
        yield
    except OSError as error:
        reason = error.strerror or str(error)
        raise storage.StorageError(f"cannot write output directory {output_dir}: {reason}") from error


def remove_dead_staging(output_dir: str) -> list[str]:
    """Removes, beside ``output_dir``, the staging directories of this host's and this PID
    namespace's processes that no longer run; returns one sentence for each removed."""
    parent, _ = storage.split(output_dir)
    if not storage.isdir(parent):
        return []
    removed = []
    host = host_name()
    namespace = pid_namespace()
    for name in storage.listdir(parent):
        match = STAGING.match(name)
        if match is None or match.group("host") != host:
            continue
        if namespace is None or match.group("namespace") != namespace:
            continue
        pid = int(match.group("pid"))
        path = storage.join(parent, name)
        if pid == os.getpid() or process_running(pid):
            continue
        if not storage.is_remote(path) and (os.path.islink(path) or not os.path.isdir(path)):
            continue
        try:
            storage.rmtree(path)
        except FileNotFoundError:  # another run removed it first
            continue
        removed.append(f"removed {path}, left by process {pid} on {host}, which no longer runs")
    return removed


@dataclass
class Plan:
    """How the checkpoint ``name`` reaches ``output_dir``.

    Attributes:
      new: The output directory does not exist yet.
      listed: The paths that its ``checkpoint`` file lists now, to keep listing.
      replaced: The files of a checkpoint of the same name, replaced or removed.
    """

    output_dir: str
    name: str
    new: bool
    listed: list[str]
    replaced: list[str]


def plan(output_dir: str, name: str, description: bytes | None, overwrite: bool) -> Plan:
    """Checks that checkpoint ``name`` (and ``description``, the ``model_description.py`` to
    write, if any) may go into ``output_dir``; returns how.

    Raises:
      OutputError: naming the file that would be lost, or what else is wrong.
    """
    if not storage.exists(output_dir):
        return Plan(output_dir, name, True, [], [])
    if not storage.isdir(output_dir):
        raise OutputError(f"output {output_dir} exists and is not a directory")
    entries = storage.listdir(output_dir)
    if entries and not overwrite:
        raise OutputError(
            f"output directory {output_dir} exists and is not empty (use --force to add the average to it)"
        )
    listed = _listed(output_dir, entries)
    replaced = [e for e in entries if e == f"{name}.index" or e.startswith(f"{name}.data-")]
    at_risk = [storage.join(output_dir, e) for e in replaced]
    if description is not None and MODEL_DESCRIPTION in entries:
        path = storage.join(output_dir, MODEL_DESCRIPTION)
        if not storage.is_plain_file(path) or storage.read(path) != description:
            at_risk.append(path)
    foreign = [e for e in entries if not _part_of_an_average(output_dir, e)]
    if at_risk and foreign:
        raise OutputError(
            f"output directory {output_dir} holds {foreign[0]}, which is not part of an average, so "
            f"{at_risk[0]} in it may not be replaced: choose another output directory, or move them away"
        )
    return Plan(output_dir, name, False, listed, replaced)


def _part_of_an_average(output_dir: str, entry: str) -> bool:
    if entry not in (STATE_FILE, MODEL_DESCRIPTION) and AVERAGE_FILE.match(entry) is None:
        return False
    return storage.is_plain_file(storage.join(output_dir, entry))


def _listed(output_dir: str, entries: list[str]) -> list[str]:
    if STATE_FILE not in entries:
        return []
    path = storage.join(output_dir, STATE_FILE)
    if not storage.is_plain_file(path):
        raise OutputError(f"{path} is not a file; replacing it would lose it: choose another output directory")
    try:
        state = checkpoint_state.parse(storage.read(path))
    except checkpoint_state.StateError as error:
        raise OutputError(
            f"{path} is not a valid checkpoint file ({error}); replacing it would lose it: "
            "choose another output directory"
        ) from None
    return state.all_model_checkpoint_paths or [state.model_checkpoint_path]


def write_state(directory: str, name: str, listed: list[str]) -> None:
    """Writes the ``checkpoint`` file of ``directory``: ``listed`` then ``name``, the latest.

    A listed path that names checkpoint ``name`` of ``directory`` is listed once, last.
    """
    target = _normalized(directory, name)
    kept = [p for p in listed if _normalized(directory, p) != target]
    storage.write(storage.join(directory, STATE_FILE), checkpoint_state.format_state(name, kept).encode())


def _normalized(directory: str, path: str) -> str:
    joined = path if os.path.isabs(path) or storage.is_remote(path) else storage.join(directory, path)
    return os.path.normpath(joined) if not storage.is_remote(joined) else joined


def publish(staging: str, target: Plan) -> None:
    """Moves the files of ``staging`` (the checkpoint ``target.name``, the ``checkpoint`` file
    that :func:`write_state` wrote for ``target``, maybe ``model_description.py``) into
    ``target.output_dir``, the ``checkpoint`` file last, then removes ``staging``."""
    output_dir = target.output_dir
    with writing(output_dir):
        _publish(staging, target)


def _publish(staging: str, target: Plan) -> None:
    output_dir = target.output_dir
    if target.new and not storage.is_remote(output_dir):
        storage.rename(staging, output_dir)
        return
    storage.makedirs(output_dir)
    _unlist(staging, target)
    files = storage.listdir(staging)
    data = [f for f in files if f.startswith(f"{target.name}.data-")]
    for name in data + [f"{target.name}.index"]:
        storage.rename(storage.join(staging, name), storage.join(output_dir, name))
    for name in target.replaced:
        if name not in data and name != f"{target.name}.index":
            storage.remove(storage.join(output_dir, name))
    if MODEL_DESCRIPTION in files:
        storage.rename(storage.join(staging, MODEL_DESCRIPTION), storage.join(output_dir, MODEL_DESCRIPTION))
    storage.rename(storage.join(staging, STATE_FILE), storage.join(output_dir, STATE_FILE))
    storage.rmtree(staging)


def _unlist(staging: str, target: Plan) -> None:
    """If the ``checkpoint`` file of ``target.output_dir`` lists ``target.name``, replaces it
    atomically (written into ``staging``, then renamed) by one that lists the others, or
    removes it if there are none."""
    name = _normalized(target.output_dir, target.name)
    kept = [p for p in target.listed if _normalized(target.output_dir, p) != name]
    if len(kept) == len(target.listed):
        return
    state = storage.join(target.output_dir, STATE_FILE)
    if not kept:
        storage.remove(state)
        return
    interim = storage.join(staging, f"{STATE_FILE}.interim")
    storage.write(interim, checkpoint_state.format_state(kept[-1], kept[:-1]).encode())
    storage.rename(interim, state)
