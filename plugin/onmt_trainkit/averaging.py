r"""Checkpoint selection and streaming averaging, from the checkpoint files alone.

No model definition, configuration or TensorFlow is needed. For each model weight
(a floating-point tensor under ``model/`` that is not an optimizer slot):

.. math:: \bar{w} = \operatorname{cast}_{\text{dtype}(w)}\Big(\frac{1}{N}\sum_{i=1}^{N} w_i\Big)

with the sum in float64, piece by piece, so memory does not grow with N. Every
other tensor (step counter, integer tensors, optimizer slots, the moving-average state of
:mod:`onmt_trainkit.moving_average`) comes from the newest checkpoint, so training can
continue from the output; ``drop_optimizer`` leaves out the training state instead.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from onmt_trainkit import protowire as pw
from onmt_trainkit.events import read_eval_metrics
from onmt_trainkit.tensor_bundle import (
    DT_BFLOAT16,
    FLOAT_DTYPES,
    NUMPY_DTYPES,
    CheckpointError,
    CheckpointReader,
    CheckpointWriter,
    bfloat16_to_float32,
    decode_string_scalar,
    encode_string_scalar,
    float32_to_bfloat16,
)

MODEL_DESCRIPTION = "model_description.py"
OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
LOWER_IS_BETTER = frozenset({"loss", "perplexity", "ter", "wer", "cer"})
"""Metrics for which a lower value is better; higher is better for all others."""

_TRAINING_STATE = re.compile(r"^optimizer/|/\.OPTIMIZER_SLOT/|^moving_average/")

Progress = Callable[[int, int, int], None]
"""Called with (bytes read, bytes to read, number of checkpoints averaged)."""


class AveragingError(ValueError):
    """A request that the averager refuses; nothing has been written."""


@dataclass(frozen=True)
class Selection:
    """Which checkpoints to average.

    Attributes:
      max_count: Average at most this many checkpoints, the newest ones (>= 1).
      checkpoints: Explicit checkpoint prefixes, instead of the model directory's list.
      min_step: Leave out checkpoints before this step.
      max_step: Leave out checkpoints after this step.
      best: Average the ``best`` checkpoints by ``metric`` instead of the newest ones.
      metric: An evaluation metric recorded during training (``loss``, ``bleu``...).
    """

    max_count: int = 8
    checkpoints: Sequence[str] | None = None
    min_step: int | None = None
    max_step: int | None = None
    best: int | None = None
    metric: str | None = None


@dataclass(frozen=True)
class Result:
    """What :func:`average_checkpoints` did."""

    checkpoints: list[str]
    output_dir: str
    checkpoint_prefix: str
    step: int
    num_averaged: int
    bytes_read: int


def checkpoint_step(prefix: str) -> int:
    """Returns the step of a checkpoint prefix such as ``run/ckpt-5000``."""
    match = re.search(r"-(\d+)$", prefix)
    if match is None:
        raise AveragingError(f"{prefix} is not a checkpoint prefix of the form <name>-<step>")
    return int(match.group(1))


def _unquote(text: str) -> str:
    return text.encode("latin-1").decode("unicode_escape").encode("latin-1").decode("utf-8")


def listed_checkpoints(model_dir: str) -> list[str]:
    """Returns the checkpoint prefixes listed in ``model_dir/checkpoint``, oldest first."""
    if not os.path.isdir(model_dir):
        raise AveragingError(f"model directory {model_dir} does not exist")
    state_path = os.path.join(model_dir, "checkpoint")
    if not os.path.isfile(state_path):
        raise AveragingError(f"model directory {model_dir} has no checkpoint (no {state_path})")
    with open(state_path, encoding="utf-8") as state:
        text = state.read()
    paths = [_unquote(p) for p in re.findall(r'^all_model_checkpoint_paths:\s*"(.*)"\s*$', text, re.M)]
    if not paths:
        paths = [_unquote(p) for p in re.findall(r'^model_checkpoint_path:\s*"(.*)"\s*$', text, re.M)]
    if not paths:
        raise AveragingError(f"model directory {model_dir} lists no checkpoint in {state_path}")
    return [p if os.path.isabs(p) else os.path.join(model_dir, p) for p in paths]


def _check_selection(selection: Selection) -> None:
    for key in ("max_count", "best"):
        value = getattr(selection, key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise AveragingError(f"--{key} must be >= 1, got {value}")
    for key in ("min_step", "max_step"):
        value = getattr(selection, key)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise AveragingError(f"--{key} must be >= 0, got {value}")
    if (
        selection.min_step is not None
        and selection.max_step is not None
        and selection.min_step > selection.max_step
    ):
        raise AveragingError(
            f"--min_step must be <= --max_step, got {selection.min_step} > {selection.max_step}"
        )
    if (selection.best is None) != (selection.metric is None):
        raise AveragingError("--best and --metric go together: give both or neither")
    if selection.checkpoints is not None and not selection.checkpoints:
        raise AveragingError("--checkpoints needs at least one checkpoint")


def _best(model_dir: str, candidates: list[str], count: int, metric: str) -> list[str]:
    history = read_eval_metrics(model_dir)
    if not history:
        raise AveragingError(
            f"--best needs evaluations recorded during training, but {model_dir}/eval has none"
        )
    known = sorted({name for metrics in history.values() for name in metrics})
    if metric not in known:
        raise AveragingError(
            f"--metric {metric!r} was not recorded during training; recorded: {', '.join(known)}"
        )
    scored = [(history[checkpoint_step(c)][metric], c) for c in candidates
              if metric in history.get(checkpoint_step(c), {})]
    if not scored:
        raise AveragingError(
            f"no kept checkpoint was evaluated on {metric!r} (evaluated steps: "
            f"{', '.join(str(s) for s in sorted(history))})"
        )
    scored.sort(key=lambda item: item[0], reverse=metric.lower() not in LOWER_IS_BETTER)
    return [checkpoint for _, checkpoint in scored[:count]]


def select_checkpoints(model_dir: str | None, selection: Selection) -> list[str]:
    """Returns the checkpoint prefixes to average, oldest first.

    Raises:
      AveragingError: if the selection is invalid or selects nothing.
    """
    _check_selection(selection)
    if selection.checkpoints is not None:
        candidates = list(selection.checkpoints)
        for prefix in candidates:
            if not os.path.isfile(prefix + ".index"):
                raise AveragingError(f"checkpoint {prefix} not found (no {prefix}.index)")
    else:
        if model_dir is None:
            raise AveragingError("give a model directory or a list of checkpoints")
        candidates = listed_checkpoints(model_dir)
    candidates.sort(key=checkpoint_step)
    if selection.min_step is not None:
        candidates = [c for c in candidates if checkpoint_step(c) >= selection.min_step]
    if selection.max_step is not None:
        candidates = [c for c in candidates if checkpoint_step(c) <= selection.max_step]
    if not candidates:
        raise AveragingError("no checkpoint is within --min_step/--max_step")
    if selection.best is not None:
        if model_dir is None:
            raise AveragingError("--best needs --model_dir, where the evaluations are recorded")
        chosen = _best(model_dir, candidates, selection.best, selection.metric)
        return sorted(chosen, key=checkpoint_step)
    if selection.checkpoints is not None:
        return candidates
    return candidates[-selection.max_count:]


def is_averaged(name: str, dtype: int) -> bool:
    """Returns ``True`` for the tensors that are averaged: the model's float weights."""
    return (
        name.startswith("model/")
        and "/.OPTIMIZER_SLOT/" not in name
        and dtype in FLOAT_DTYPES
    )


def _check_agreement(readers: list[CheckpointReader]) -> list[str]:
    newest = readers[-1]
    names = sorted(n for n, e in newest.entries.items() if is_averaged(n, e.dtype))
    for reader in readers[:-1]:
        for name in names:
            expected = newest.entries[name]
            entry = reader.entries.get(name)
            if entry is None:
                raise AveragingError(
                    f"checkpoints disagree: {name} is in {newest.prefix} but not in {reader.prefix}"
                )
            if (entry.dtype, entry.shape) != (expected.dtype, expected.shape):
                raise AveragingError(
                    f"checkpoints disagree: {name} is {expected.dtype_name} {list(expected.shape)} "
                    f"in {newest.prefix} but {entry.dtype_name} {list(entry.shape)} in {reader.prefix}"
                )
        extra = sorted(n for n, e in reader.entries.items() if is_averaged(n, e.dtype) and n not in newest.entries)
        if extra:
            raise AveragingError(
                f"checkpoints disagree: {extra[0]} is in {reader.prefix} but not in {newest.prefix}"
            )
    return names


def _drop_training_state(object_graph: bytes) -> bytes:
    """Removes optimizer and moving-average attributes and slot links from an object graph."""
    nodes = []
    for number, wire_type, node in pw.fields(object_graph):
        if number == 1:
            kept = []
            for field in pw.fields(node):
                if field[0] == 3:  # slot_variables
                    continue
                if field[0] == 2:  # attributes: SerializedTensor, checkpoint_key = 3
                    key = pw.first(list(pw.fields(field[2])), 3, b"").decode("utf-8")
                    if _TRAINING_STATE.search(key):
                        continue
                kept.append(field)
            node = pw.encode(kept)
        nodes.append((number, wire_type, node))
    return pw.encode(nodes)


def _check_output(output_dir: str, inputs: list[str], model_dir: str | None, overwrite: bool) -> None:
    output = os.path.realpath(output_dir)
    sources = [os.path.realpath(os.path.dirname(p) or ".") for p in inputs]
    if model_dir is not None:
        sources.append(os.path.realpath(model_dir))
    for source in sources:
        if output == source:
            raise AveragingError(f"output directory {output_dir} is the model directory; choose another")
        if source.startswith(output.rstrip(os.sep) + os.sep):
            raise AveragingError(
                f"output directory {output_dir} contains the checkpoints to average; choose another"
            )
    if os.path.lexists(output_dir):
        if not os.path.isdir(output_dir):
            raise AveragingError(f"output {output_dir} exists and is not a directory")
        if os.listdir(output_dir) and not overwrite:
            raise AveragingError(
                f"output directory {output_dir} exists and is not empty (use --force to replace it)"
            )


def _write_state(directory: str, name: str) -> None:
    with open(os.path.join(directory, "checkpoint"), "w", encoding="utf-8") as state:
        state.write(f'model_checkpoint_path: "{name}"\nall_model_checkpoint_paths: "{name}"\n')


def _replace_directory(source: str, destination: str) -> None:
    """Moves ``source`` to ``destination``, replacing it; the old one is removed last."""
    if not os.path.lexists(destination):
        os.rename(source, destination)
        return
    trash = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(os.path.abspath(destination)))
    old = os.path.join(trash, "old")
    os.rename(destination, old)
    os.rename(source, destination)
    shutil.rmtree(trash)


def _as_float(piece: memoryview, dtype: int) -> np.ndarray:
    values = np.frombuffer(piece, dtype=NUMPY_DTYPES[dtype])
    return bfloat16_to_float32(values) if dtype == DT_BFLOAT16 else values


class _PartialSums(threading.Thread):
    """Sums, in float64, the pieces of the averaged tensors over some of the checkpoints,
    tensor after tensor and piece after piece, and queues each sum (at most ``DEPTH``
    ahead of the consumer). A failure is queued in place of the sum; :meth:`stop` ends
    the thread early."""

    DEPTH = 4

    def __init__(self, readers: list[CheckpointReader], names: list[str], piece_bytes: int):
        super().__init__(daemon=True)
        self.readers = readers
        self.names = names
        self.piece_bytes = piece_bytes
        self.queue: queue.Queue = queue.Queue(self.DEPTH)
        self._stopped = threading.Event()

    def run(self) -> None:
        # A ring of sums: up to DEPTH queued, one with the consumer, one being filled.
        totals = [np.empty(self.piece_bytes // 2) for _ in range(self.DEPTH + 2)]
        buffer = bytearray(self.piece_bytes)
        count = 0
        try:
            for name in self.names:
                entry = self.readers[0].entries[name]
                streams = [reader.pieces(name, buffer) for reader in self.readers]
                for start in range(0, entry.size, self.piece_bytes):
                    length = min(self.piece_bytes, entry.size - start) // NUMPY_DTYPES[entry.dtype].itemsize
                    total = totals[count % len(totals)][:length]
                    total[:] = 0
                    for stream in streams:
                        np.add(total, _as_float(next(stream), entry.dtype), out=total)
                    if not self._put(total):
                        return
                    count += 1
        except BaseException as error:  # handed to the consumer, which raises it
            self._put(error)

    def _put(self, item: object) -> bool:
        while not self._stopped.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def stop(self) -> None:
        self._stopped.set()


class _Averager:
    """Averages tensors piece by piece: two threads each sum the pieces of half of the
    checkpoints (reading, checksums and numpy release the GIL), running ahead of the main
    thread, which adds the halves, divides, casts and writes. Pieces of ``PIECE_BYTES``
    stay in the processor's cache, and memory stays a few pieces whatever the number of
    checkpoints. The split between the threads is fixed, so results do not vary from run
    to run.
    """

    PIECE_BYTES = 1 << 19

    def __init__(self, readers: list[CheckpointReader], names: list[str]):
        self.count = len(readers)
        self.entries = readers[-1].entries
        halves = [readers[0::2], readers[1::2]]
        self.threads = [_PartialSums(half, names, self.PIECE_BYTES) for half in halves if half]
        self.output = np.empty(self.PIECE_BYTES, np.uint8)

    def __enter__(self) -> _Averager:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for thread in self.threads:
            thread.stop()
        for thread in self.threads:
            thread.join()

    def mean(self, name: str, on_piece: Callable[[int], None]) -> Iterator[memoryview]:
        """Yields the stored bytes of the mean of tensor ``name``, piece by piece, each
        overwritten by the next; the tensors must be asked for in the order of ``names``."""
        entry = self.entries[name]
        dtype = NUMPY_DTYPES[entry.dtype]
        for _ in range(0, entry.size, self.PIECE_BYTES):
            mean, *rest = sums = [thread.queue.get() for thread in self.threads]
            for item in sums:
                if isinstance(item, BaseException):
                    raise item
            for other in rest:
                mean += other
            on_piece(mean.size * dtype.itemsize * self.count)
            if entry.dtype == DT_BFLOAT16:
                mean /= self.count
                yield float32_to_bfloat16(mean).data
            else:
                # Divided in float64, then rounded once to the stored dtype.
                output = self.output[: mean.size * dtype.itemsize].view(dtype)
                yield np.divide(mean, self.count, out=output).data


def _average_into(
    writer: CheckpointWriter,
    readers: list[CheckpointReader],
    averaged: list[str],
    drop_optimizer: bool,
    progress: Progress | None,
) -> int:
    newest = readers[-1]
    total = sum(newest.entries[n].size for n in averaged) * len(readers)
    done = 0

    def on_piece(size: int) -> None:
        nonlocal done
        done += size
        if progress is not None:
            progress(done, total, len(readers))

    # Every output tensor gets its place first; then a thread copies the tensors that come
    # from the newest checkpoint while this one writes the averages.
    averaged_set = set(averaged)
    copies: list[tuple[str, list[bytes] | None, int]] = []
    for name in sorted(newest.entries):
        entry = newest.entries[name]
        if name in averaged_set:
            writer.place(entry, entry.size)
        elif drop_optimizer and _TRAINING_STATE.search(name):
            continue
        elif drop_optimizer and name == OBJECT_GRAPH:
            data, crc = encode_string_scalar(_drop_training_state(decode_string_scalar(newest.raw(name))))
            writer.place(entry, len(data))
            copies.append((name, [data], crc))
        else:
            writer.place(entry, entry.size)
            copies.append((name, None, entry.crc))
    copier = _Copier(newest, writer, copies)
    copier.start()
    try:
        with _Averager(readers, averaged) as averager:
            for name in averaged:
                copier.check()  # its failure now rather than at the end
                writer.write(name, averager.mean(name, on_piece))
    except BaseException:
        copier.stop()
        raise
    finally:
        copier.join()
    copier.check()
    writer.finish()
    return done


class _Copier(threading.Thread):
    """Writes the tensors that come from the newest checkpoint: ``copies`` holds
    ``(name, bytes or None for the newest checkpoint's own, CRC)``. A failure is kept
    and raised by :meth:`check`; :meth:`stop` ends the thread early."""

    def __init__(self, newest: CheckpointReader, writer: CheckpointWriter, copies: list):
        super().__init__(daemon=True)
        self.newest = newest
        self.writer = writer
        self.copies = copies
        self.error: BaseException | None = None
        self._stopped = threading.Event()

    def run(self) -> None:
        buffer = bytearray(_Averager.PIECE_BYTES)
        try:
            for name, data, crc in self.copies:
                if self._stopped.is_set():
                    return
                self.writer.write(name, self.newest.pieces(name, buffer) if data is None else data, crc)
        except BaseException as error:  # raised in the caller's thread by check()
            self.error = error

    def stop(self) -> None:
        self._stopped.set()

    def check(self) -> None:
        """Raises the copy's failure, if any."""
        if self.error is not None:
            raise self.error


def average_checkpoints(
    model_dir: str | None,
    output_dir: str,
    selection: Selection = Selection(),
    *,
    overwrite: bool = False,
    drop_optimizer: bool = False,
    progress: Progress | None = None,
) -> Result:
    """Averages checkpoints into a new model directory, written aside then renamed.

    Args:
      model_dir: The model directory (its ``checkpoint`` file lists the checkpoints, its
        ``model_description.py`` is copied). May be ``None`` with explicit checkpoints.
      output_dir: The directory to create.
      selection: Which checkpoints to average.
      overwrite: Replace ``output_dir`` if it exists and is not empty.
      drop_optimizer: Leave out the optimizer and moving-average state.
      progress: Called with (bytes read, bytes to read, number of checkpoints) as reading
        goes; every checkpoint is read at the same pace, a piece of each at a time.

    Returns:
      A :class:`Result`.

    Raises:
      AveragingError: for a request it refuses (nothing is written).
      CheckpointError: for a missing, truncated or corrupt checkpoint (nothing is written).
    """
    checkpoints = select_checkpoints(model_dir, selection)
    _check_output(output_dir, checkpoints, model_dir, overwrite)
    readers = [CheckpointReader(prefix) for prefix in checkpoints]
    try:
        averaged = _check_agreement(readers)
        newest = readers[-1]
        step = checkpoint_step(newest.prefix)
        name = f"ckpt-{step}"
        parent = os.path.dirname(os.path.abspath(output_dir))
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.", dir=parent)
        try:
            writer = CheckpointWriter(os.path.join(staging, name), newest.header)
            try:
                bytes_read = _average_into(writer, readers, averaged, drop_optimizer, progress)
            finally:
                writer.close()
            _write_state(staging, name)
            source_dir = model_dir if model_dir is not None else os.path.dirname(checkpoints[-1])
            description = os.path.join(source_dir, MODEL_DESCRIPTION)
            if os.path.isfile(description):
                shutil.copyfile(description, os.path.join(staging, MODEL_DESCRIPTION))
            _replace_directory(staging, output_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        for reader in readers:
            reader.close()
    return Result(
        checkpoints=checkpoints,
        output_dir=output_dir,
        checkpoint_prefix=os.path.join(output_dir, name),
        step=step,
        num_averaged=len(averaged),
        bytes_read=bytes_read,
    )


__all__ = [
    "AveragingError",
    "CheckpointError",
    "Result",
    "Selection",
    "average_checkpoints",
    "checkpoint_step",
    "listed_checkpoints",
    "select_checkpoints",
]
