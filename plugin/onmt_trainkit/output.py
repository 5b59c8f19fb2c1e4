"""Where an average is written, and how it reaches its output directory without losing a file.

The average is written into a *staging directory* beside the output directory (in the same
parent, so that a rename moves it), named after the process that writes it::

    .<output name>.averaging-<process id>@<host>-<8 hex digits>

Then:

- a new output directory is the staging directory renamed (a remote file system, which has
  no directory rename, gets the files one by one, the ``checkpoint`` file last);
- into an existing one (``--force``, and always for ``onmt-main average_checkpoints``), the
  checkpoint is *added*, as stock OpenNMT-tf adds it: its files are moved in, then the
  ``checkpoint`` file is replaced by one that lists the checkpoints it listed and the new one,
  last (the latest). No other file is touched. A checkpoint of the same name
  (``ckpt-<step>``) and ``model_description.py`` are replaced only if the directory holds
  nothing but averages (checkpoint files, ``checkpoint``, ``model_description.py``); otherwise
  the request is refused, naming the file that would be lost.

A run that dies leaves its staging directory; the next run into the same parent removes the
staging directories of this host's processes that no longer run, and says so.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from dataclasses import dataclass

from onmt_trainkit import checkpoint_state, storage

STATE_FILE = "checkpoint"
MODEL_DESCRIPTION = "model_description.py"
AVERAGE_FILE = re.compile(r"^ckpt-\d+\.(?:index|data-\d{5}-of-\d{5})$")
"""The checkpoint files that an average holds (beside ``checkpoint`` and ``model_description.py``)."""

STAGING = re.compile(r"^\.(?P<output>.+)\.averaging-(?P<pid>\d+)@(?P<host>.+)-(?P<token>[0-9a-f]{8})$")


class OutputError(ValueError):
    """An output directory that the averager refuses to write into; nothing has been written."""


def host_name() -> str:
    """Returns this machine's name as staging directories spell it."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "localhost"


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
    """Creates and returns a new staging directory for ``output_dir``, beside it."""
    parent, name = storage.split(output_dir)
    storage.makedirs(parent)
    while True:
        path = storage.join(parent, f".{name}.averaging-{os.getpid()}@{host_name()}-{secrets.token_hex(4)}")
        if storage.exists(path):
            continue
        try:
            storage.mkdir(path)
            return path
        except FileExistsError:
            continue


def remove_dead_staging(output_dir: str) -> list[str]:
    """Removes, beside ``output_dir``, the staging directories of this host's processes that
    no longer run; returns one sentence for each removed."""
    parent, _ = storage.split(output_dir)
    if not storage.isdir(parent):
        return []
    removed = []
    host = host_name()
    for name in storage.listdir(parent):
        match = STAGING.match(name)
        if match is None or match.group("host") != host:
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
    if target.new and not storage.is_remote(output_dir):
        storage.rename(staging, output_dir)
        return
    storage.makedirs(output_dir)
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
