r"""Checkpoint selection and streaming averaging, from the checkpoint files alone.

No model definition or configuration is needed, nor TensorFlow for local paths (remote ones,
``gs://``..., are read and written through ``tf.io.gfile``: see :mod:`onmt_trainkit.storage`).
For each model weight (a floating-point tensor under ``<model_key>/``, ``model/`` by default,
that is not an optimizer slot):

.. math:: \bar{w} = \operatorname{round}_{\text{dtype}(w)}\Big(\frac{1}{N}\sum_{i=1}^{N} w_i\Big)

with the sum and the division in float64, piece by piece, so memory does not grow with N, then
one rounding to nearest (ties to even) to the weight's own dtype. :math:`w_i` is the weight as
checkpoint i holds it under the requested *weights* (:mod:`onmt_trainkit.moving_average_layout`):
``ema`` (the default) its model weights ``model/...``; ``raw`` the training weights that the
plugin's moving average saves beside them (the model weights of a checkpoint without that
state); ``ema:<decay>`` that decay's average. The output holds :math:`\bar{w}` under the
model's own names, so stock OpenNMT-tf reads it as the model; with one checkpoint it is that
checkpoint's weights, bit for bit.

Every other tensor (step counter, integer tensors, optimizer slots) comes from the newest
checkpoint, so training can continue from the output, from its model weights;
``drop_optimizer`` leaves out the optimizer instead. The moving-average state
(``moving_average/...``) is always left out: it holds training weights and averages that are
not the output's model weights, and a resumed run would train from those. A run resumed from
the output starts its moving averages from the output's weights. How the result reaches its
output directory, and what happens to what is already there: :mod:`onmt_trainkit.output`.

With ``best``, checkpoints are chosen by a metric recorded during ``--with_eval`` training:
the model weights' (``metrics/<name>``) or, with ``train.moving_average_eval_all``, the
training weights' and each average's (``eval/raw/<name>``, ``eval/ema_<decay>/<name>``); see
:func:`resolve_metric`.
"""

from __future__ import annotations

import os
import queue
import re
import threading
from dataclasses import dataclass, field
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from onmt_trainkit import checkpoint_state, output, storage
from onmt_trainkit import moving_average_layout as layout
from onmt_trainkit import protowire as pw
from onmt_trainkit.events import read_scalars
from onmt_trainkit.output import MODEL_DESCRIPTION, OutputError
from onmt_trainkit.tensor_bundle import (
    DT_BFLOAT16,
    DT_STRING,
    FLOAT_DTYPES,
    NUMPY_DTYPES,
    CheckpointError,
    CheckpointReader,
    CheckpointWriter,
    bfloat16_to_float32,
    decode_string_scalar,
    encode_string_scalar,
    float64_to_bfloat16,
)

OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
LOWER_IS_BETTER = frozenset({"loss", "perplexity", "ter", "wer", "cer"})
"""Metrics for which a lower value is better; higher is better for all others."""

_MOVING_AVERAGE_STATE = re.compile(rf"^{layout.ROOT}/")
_OPTIMIZER_STATE = re.compile(r"^optimizer/|/\.OPTIMIZER_SLOT/")
_MODEL_METRICS = "metrics/"
_AVERAGE_METRICS = "eval/"

Progress = Callable[[int, int, int], None]
"""Called with (bytes read, bytes to read, number of checkpoints averaged)."""

Log = Callable[[str], None]
"""Called with a sentence saying what was done beside the average (a staging directory removed)."""


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
    weights: str = "ema"
    """The weights averaged: ``raw``, ``ema`` or ``ema:<decay>`` (the decay as Python writes it)."""
    metric: str | None = None
    """With ``best``: the recorded metric that chose the checkpoints (see :func:`resolve_metric`)."""
    scores: dict[int, float] = field(default_factory=dict)
    """With ``best``: the metric of each chosen checkpoint, by step."""
    notes: list[str] = field(default_factory=list)
    """Sentences on how the weights were read (checkpoints without moving-average state)."""


def checkpoint_step(prefix: str) -> int:
    """Returns the step of a checkpoint prefix such as ``run/ckpt-5000``."""
    match = re.search(r"-(\d+)$", prefix)
    if match is None:
        raise AveragingError(f"{prefix} is not a checkpoint prefix of the form <name>-<step>")
    return int(match.group(1))


def listed_checkpoints(model_dir: str) -> list[str]:
    """Returns the checkpoint prefixes listed in ``model_dir/checkpoint``, in its order, each once.

    Raises:
      AveragingError: if the directory or its ``checkpoint`` file is missing or invalid.
    """
    if not storage.isdir(model_dir):
        raise AveragingError(f"model directory {model_dir} does not exist")
    state_path = storage.join(model_dir, output.STATE_FILE)
    if not storage.isfile(state_path):
        raise AveragingError(f"model directory {model_dir} has no checkpoint (no {state_path})")
    try:
        state = checkpoint_state.parse(storage.read(state_path))
    except checkpoint_state.StateError as error:
        raise AveragingError(f"{state_path} is not a valid checkpoint file: {error}") from None
    paths = state.all_model_checkpoint_paths or [state.model_checkpoint_path]
    listed: list[str] = []
    for path in paths:
        if not (os.path.isabs(path) or storage.is_remote(path)):
            path = storage.join(model_dir, path)
        if path not in listed:
            listed.append(path)
    return listed


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


def check_weights(weights: object) -> str:
    """Returns ``weights`` written as :attr:`Result.weights` writes it (``ema:0.990`` as
    ``ema:0.99``).

    Raises:
      AveragingError: unless it is ``raw``, ``ema`` or ``ema:<decay>`` with 0 < decay < 1.
    """
    try:
        kind, decay = layout.parse_weights(weights)
    except layout.LayoutError:
        raise AveragingError(
            f"--weights must be raw, ema or ema:<decay> with 0 < decay < 1, got {weights!r}"
        ) from None
    return kind if decay is None else f"{kind}:{layout.decay_name(decay)}"


def weights_label(weights: str) -> str | None:
    """The label under which ``train.moving_average_eval_all`` records the evaluations of
    ``weights`` (``raw``, ``ema_<decay>``); ``None`` for ``ema``, the model weights, which
    OpenNMT-tf's own evaluation records as ``metrics/<name>``."""
    kind, decay = layout.parse_weights(weights)
    if kind == layout.RAW:
        return layout.RAW
    return None if decay is None else f"ema_{layout.decay_name(decay)}"


def recorded_metrics(model_dir: str) -> dict[int, dict[str, float]]:
    """Returns ``{step: {metric: value}}`` for the evaluations recorded in ``model_dir/eval``:
    the model weights' metrics by their name (TensorBoard's ``metrics/bleu`` as ``bleu``), the
    training weights' and each average's with their label (``eval/raw/loss`` as ``raw/loss``,
    ``eval/ema_0.9999/loss`` as ``ema_0.9999/loss``)."""
    history: dict[int, dict[str, float]] = {}
    for step, tags in read_scalars(os.path.join(model_dir, "eval")).items():
        for tag, value in tags.items():
            if tag.startswith(_MODEL_METRICS):
                name = tag[len(_MODEL_METRICS):]
            elif tag.startswith(_AVERAGE_METRICS) and tag.count("/") == 2:
                name = tag[len(_AVERAGE_METRICS):]
            else:
                continue
            history.setdefault(step, {})[name] = value
    return history


def resolve_metric(metric: str, weights: str, recorded: set[str], model_weights: Callable[[], bool]) -> str:
    """Returns the name, as :func:`recorded_metrics` gives it, of the metric that ``--metric``
    asks for.

    A name without ``/`` (``loss``, ``bleu``) is the metric of the weights averaged: the model
    weights' (``loss``) for ``ema``, ``raw/loss`` for ``raw``, ``ema_<decay>/loss`` for
    ``ema:<decay>``; when that one was not recorded but ``weights`` are the model weights
    (``model_weights()``: ``raw`` of a run without moving average, ``ema:<decay>`` of the
    decay in ``model/``), the model weights' (``loss``). Any other weights' metric is named
    in full, as TensorBoard shows it or without its ``eval/``: ``metrics/bleu`` (the model
    weights'), ``eval/raw/loss`` or ``raw/loss``, ``eval/ema_0.9999/loss`` or
    ``ema_0.9999/loss``.
    """
    if metric.startswith(_MODEL_METRICS):
        return metric[len(_MODEL_METRICS):]
    if metric.startswith(_AVERAGE_METRICS):
        metric = metric[len(_AVERAGE_METRICS):]
    if "/" in metric:
        label, name = metric.split("/", 1)
        if label.startswith("ema_"):
            try:
                label = f"ema_{layout.decay_name(float(label[4:]))}"
            except ValueError:
                pass
        return f"{label}/{name}"
    label = weights_label(weights)
    if label is None:
        return metric
    qualified = f"{label}/{metric}"
    if qualified not in recorded and model_weights():
        return metric
    return qualified


def _is_model_weights(weights: str, newest: str) -> bool:
    """Whether ``weights`` of checkpoint ``newest`` are its model weights."""
    with CheckpointReader(newest) as reader:
        names = set(reader.entries)
    kind, decay = layout.parse_weights(weights)
    if kind == layout.RAW:
        return layout.layout(names) == layout.NONE
    return decay is None or layout.model_decay(names) == decay


def _best(
    model_dir: str, candidates: list[str], count: int, metric: str, weights: str
) -> tuple[str, list[tuple[float, str]]]:
    history = recorded_metrics(model_dir)
    if not history:
        raise AveragingError(
            f"--best needs evaluations recorded during training, but {model_dir}/eval has none"
        )
    known = sorted({name for metrics in history.values() for name in metrics}, key=lambda n: ("/" in n, n))
    name = resolve_metric(metric, weights, set(known), lambda: _is_model_weights(weights, candidates[-1]))
    if name not in known:
        asked = repr(metric) if name == metric else f"{metric!r} ({name}, for --weights {weights})"
        hint = (
            "; train.moving_average_eval_all: true records raw/loss and ema_<decay>/loss for each decay"
            if "/" in name and not any("/" in n for n in known) else ""
        )
        raise AveragingError(
            f"--metric {asked} was not recorded during training; recorded: {', '.join(known)}{hint}"
        )
    scored = [(history[checkpoint_step(c)][name], c) for c in candidates
              if name in history.get(checkpoint_step(c), {})]
    if not scored:
        raise AveragingError(
            f"no kept checkpoint was evaluated on {name!r} (evaluated steps: "
            f"{', '.join(str(s) for s in sorted(history))})"
        )
    lower = name.rsplit("/", 1)[-1].lower() in LOWER_IS_BETTER
    scored.sort(key=lambda item: item[0], reverse=not lower)
    return name, scored[:count]


def select_checkpoints(model_dir: str | None, selection: Selection, weights: str = "ema") -> list[str]:
    """Returns the checkpoint prefixes to average, oldest first.

    Args:
      model_dir: The model directory, or ``None`` with explicit checkpoints.
      selection: Which checkpoints.
      weights: The weights to average (``raw``, ``ema``, ``ema:<decay>``), whose metric a
        ``best`` selection uses unless its metric names another's (:func:`resolve_metric`).

    Raises:
      AveragingError: if the selection is invalid or selects nothing.
    """
    return _select(model_dir, selection, check_weights(weights))[0]


def _select(
    model_dir: str | None, selection: Selection, weights: str
) -> tuple[list[str], str | None, dict[int, float]]:
    """:func:`select_checkpoints`, with the metric that chose them and their scores."""
    _check_selection(selection)
    if selection.checkpoints is not None:
        candidates = list(selection.checkpoints)
        for prefix in candidates:
            if not storage.isfile(prefix + ".index"):
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
        metric, scored = _best(model_dir, candidates, selection.best, selection.metric, weights)
        chosen = sorted((c for _, c in scored), key=checkpoint_step)
        return chosen, metric, {checkpoint_step(c): value for value, c in scored}
    if selection.checkpoints is not None:
        return candidates, None, {}
    return candidates[-selection.max_count:], None, {}


def is_averaged(name: str, dtype: int, model_key: str = "model") -> bool:
    """Returns ``True`` for the tensors that are averaged: the model's float weights."""
    return (
        name.startswith(model_key + "/")
        and "/.OPTIMIZER_SLOT/" not in name
        and dtype in FLOAT_DTYPES
    )


def check_model_key(model_key: object) -> str:
    """Returns ``model_key`` if it can name a checkpoint's root object.

    Raises:
      AveragingError: otherwise.
    """
    if not isinstance(model_key, str) or not model_key or "/" in model_key:
        raise AveragingError(f"--model_key must be a non-empty name without '/', got {model_key!r}")
    return model_key


def _check_agreement(readers: list[CheckpointReader], model_key: str) -> list[str]:
    newest = readers[-1]
    names = sorted(n for n, e in newest.entries.items() if is_averaged(n, e.dtype, model_key))
    if not names:
        hint = (
            " (a TensorFlow 1 checkpoint, whose tensors are named by variable?)"
            if OBJECT_GRAPH not in newest.entries
            else f" (does the checkpoint save the model under another name than {model_key!r}?)"
        )
        raise AveragingError(
            f"nothing to average: checkpoint {newest.prefix} has no floating-point tensor under "
            f"'{model_key}/'{hint}"
        )
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
        extra = sorted(
            n for n, e in reader.entries.items() if is_averaged(n, e.dtype, model_key) and n not in newest.entries
        )
        if extra:
            raise AveragingError(
                f"checkpoints disagree: {extra[0]} is in {reader.prefix} but not in {newest.prefix}"
            )
    return names


def _sources(
    readers: list[CheckpointReader], names: list[str], weights: str
) -> tuple[list[list[str]], list[str]]:
    """For each checkpoint, the tensors that hold ``weights`` of the model weights ``names``
    (in their order), checked against the newest checkpoint's; and the sentences to say
    about how they were read."""
    if weights == "ema":
        return [names for _ in readers], []
    newest = readers[-1]
    sources, without_state = [], []
    for reader in readers:
        try:
            mapping = layout.weight_names(reader.entries, weights)
        except layout.LayoutError as error:
            raise AveragingError(f"checkpoint {reader.prefix}: {error}") from None
        if layout.layout(reader.entries) == layout.NONE:
            without_state.append(reader.prefix)
        chosen = [mapping.get(name, name) for name in names]
        for name, source in zip(names, chosen):
            expected, entry = newest.entries[name], reader.entries[source]
            if (entry.dtype, entry.shape) != (expected.dtype, expected.shape):
                raise AveragingError(
                    f"checkpoint {reader.prefix} holds {source} as {entry.dtype_name} {list(entry.shape)} "
                    f"but {name} is {expected.dtype_name} {list(expected.shape)} in {newest.prefix}"
                )
        sources.append(chosen)
    notes = []
    if without_state:
        one = len(without_state) == 1
        notes.append(
            f"{', '.join(without_state)} {'holds' if one else 'hold'} no moving-average state: "
            f"{'its' if one else 'their'} model weights are taken as the training weights"
        )
    return sources, notes


def _drop_state(object_graph: bytes, prefix: str, drop_optimizer: bool) -> bytes:
    """Removes, from an object graph, the moving-average attributes, and with
    ``drop_optimizer`` the optimizer's attributes and the slot links."""
    try:
        return _drop_state_fields(object_graph, drop_optimizer)
    except (pw.DecodeError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {prefix} is corrupt: {OBJECT_GRAPH} does not parse") from None


def _dropped(name: str, drop_optimizer: bool) -> bool:
    """Whether tensor ``name`` is left out of the output."""
    return bool(_MOVING_AVERAGE_STATE.search(name) or (drop_optimizer and _OPTIMIZER_STATE.search(name)))


def _drop_state_fields(object_graph: bytes, drop_optimizer: bool) -> bytes:
    nodes = []
    for number, wire_type, node in pw.fields(object_graph):
        if number == 1:
            kept = []
            for item in pw.fields(node):
                if item[0] == 3 and drop_optimizer:  # slot_variables
                    continue
                if item[0] == 2:  # attributes: SerializedTensor, checkpoint_key = 3
                    key = pw.first(list(pw.fields(item[2])), 3, b"").decode("utf-8")
                    if _dropped(key, drop_optimizer):
                        continue
                kept.append(item)
            node = pw.encode(kept)
        nodes.append((number, wire_type, node))
    return pw.encode(nodes)


def _check_output(output_dir: str, inputs: list[str], model_dir: str | None) -> None:
    target = storage.normalize(output_dir)
    separator = "/" if storage.is_remote(target) else os.sep
    sources = [storage.normalize(storage.split(p)[0]) for p in inputs]
    if model_dir is not None:
        sources.append(storage.normalize(model_dir))
    for source in sources:
        if target == source:
            raise AveragingError(f"output directory {output_dir} is the model directory; choose another")
        if source.startswith(target.rstrip(separator) + separator):
            raise AveragingError(
                f"output directory {output_dir} contains the checkpoints to average; choose another"
            )


def _as_float(piece: memoryview, dtype: int) -> np.ndarray:
    values = np.frombuffer(piece, dtype=NUMPY_DTYPES[dtype])
    return bfloat16_to_float32(values) if dtype == DT_BFLOAT16 else values


class _PartialSums(threading.Thread):
    """Sums, in float64, the pieces of the averaged tensors over some of the checkpoints
    (``sources[i]``: the tensors of checkpoint i, in the order of the sums), tensor after
    tensor and piece after piece, and queues each sum (at most ``DEPTH``
    ahead of the consumer). A failure is queued in place of the sum; :meth:`stop` ends
    the thread early."""

    DEPTH = 4

    def __init__(self, readers: list[CheckpointReader], sources: list[list[str]], piece_bytes: int):
        super().__init__(daemon=True)
        self.readers = readers
        self.sources = sources
        self.piece_bytes = piece_bytes
        self.queue: queue.Queue = queue.Queue(self.DEPTH)
        self._stopped = threading.Event()

    def run(self) -> None:
        # A ring of sums: up to DEPTH queued, one with the consumer, one being filled.
        totals = [np.empty(self.piece_bytes // 2) for _ in range(self.DEPTH + 2)]
        buffer = bytearray(self.piece_bytes)
        count = 0
        try:
            np.seterr(invalid="ignore", over="ignore")  # this thread's: inf - inf is NaN, as it should be
            for names in zip(*self.sources):
                entry = self.readers[0].entries[names[0]]
                streams = [reader.pieces(name, buffer) for reader, name in zip(self.readers, names)]
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

    def __init__(self, readers: list[CheckpointReader], sources: list[list[str]]):
        self.count = len(readers)
        self.entries = readers[-1].entries
        halves = [(readers[0::2], sources[0::2]), (readers[1::2], sources[1::2])]
        self.threads = [_PartialSums(half, tensors, self.PIECE_BYTES) for half, tensors in halves if half]
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
        """Yields the stored bytes of the mean of model weight ``name`` (as the newest
        checkpoint names it), piece by piece, each overwritten by the next; the weights must be
        asked for in the order of the sources."""
        entry = self.entries[name]
        dtype = NUMPY_DTYPES[entry.dtype]
        for _ in range(0, entry.size, self.PIECE_BYTES):
            mean, *rest = sums = [thread.queue.get() for thread in self.threads]
            for item in sums:
                if isinstance(item, BaseException):
                    raise item
            # inf - inf is NaN and a float16 mean past 65504 is inf, as they should be: no warning.
            with np.errstate(invalid="ignore", over="ignore"):
                for other in rest:
                    mean += other
                if entry.dtype == DT_BFLOAT16:
                    mean /= self.count
                    result = float64_to_bfloat16(mean)
                else:
                    # Divided in float64, then rounded once to the stored dtype.
                    output = self.output[: mean.size * dtype.itemsize].view(dtype)
                    result = np.divide(mean, self.count, out=output)
            on_piece(mean.size * dtype.itemsize * self.count)
            yield result.data


def _average_into(
    writer: CheckpointWriter,
    readers: list[CheckpointReader],
    averaged: list[str],
    sources: list[list[str]],
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
    placed: list[str] = []
    copies: list[tuple[str, list[bytes] | None, int]] = []
    for name in sorted(newest.entries):
        entry = newest.entries[name]
        if name in averaged_set:
            writer.place(entry, entry.size)
        elif _dropped(name, drop_optimizer):
            continue
        elif name == OBJECT_GRAPH and (drop_optimizer or any(map(_MOVING_AVERAGE_STATE.search, newest.entries))):
            if entry.dtype != DT_STRING or entry.shape != ():
                raise CheckpointError(f"checkpoint {newest.prefix} is corrupt: {OBJECT_GRAPH} is not a string")
            graph = _drop_state(decode_string_scalar(newest.raw(name)), newest.prefix, drop_optimizer)
            data, crc = encode_string_scalar(graph)
            writer.place(entry, len(data))
            copies.append((name, [data], crc))
        else:
            writer.place(entry, entry.size)
            copies.append((name, None, entry.crc))
        placed.append(name)
    if writer.in_order:
        _write_in_order(writer, newest, readers, sources, placed, copies, on_piece)
        writer.finish()
        return done
    copier = _Copier(newest, writer, copies)
    copier.start()
    try:
        with _Averager(readers, sources) as averager:
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


def _write_in_order(
    writer: CheckpointWriter,
    newest: CheckpointReader,
    readers: list[CheckpointReader],
    sources: list[list[str]],
    placed: list[str],
    copies: list[tuple[str, list[bytes] | None, int]],
    on_piece: Callable[[int], None],
) -> None:
    """Writes every placed tensor in place order from this thread (a remote file is appended to)."""
    copied = {name: (data, crc) for name, data, crc in copies}
    buffer = bytearray(_Averager.PIECE_BYTES)
    with _Averager(readers, sources) as averager:
        for name in placed:
            if name in copied:
                data, crc = copied[name]
                writer.write(name, newest.pieces(name, buffer) if data is None else data, crc)
            else:
                writer.write(name, averager.mean(name, on_piece))


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
    model_key: str = "model",
    log: Log | None = None,
    weights: str = "ema",
) -> Result:
    """Averages checkpoints into a model directory, written aside then moved in.

    The output's model weights are the average of the requested ``weights``; it holds no
    moving-average state (see the module docstring).

    Args:
      model_dir: The model directory (its ``checkpoint`` file lists the checkpoints, its
        ``model_description.py`` is copied). May be ``None`` with explicit checkpoints.
      output_dir: The output directory. A path with a scheme (``gs://``...) goes through
        ``tf.io.gfile``, as do the inputs'.
      selection: Which checkpoints to average.
      overwrite: Also write into an existing, non-empty ``output_dir``: the average is added to
        it as :mod:`onmt_trainkit.output` says, never losing a file that is not an average's.
      drop_optimizer: Leave out the optimizer (its step counter and slots).
      progress: Called with (bytes read, bytes to read, number of checkpoints) as reading
        goes; every checkpoint is read at the same pace, a piece of each at a time.
      model_key: The name under which the checkpoints hold the model (``model`` for OpenNMT-tf):
        the floating-point tensors under ``<model_key>/`` are averaged.
      log: Called with a sentence for each dead run's staging directory removed.
      weights: The weights to average: ``ema`` (the checkpoints' model weights), ``raw`` (the
        training weights, which the plugin's moving average saves beside them; the model
        weights of a checkpoint without that state) or ``ema:<decay>`` (the average of that
        decay; every checkpoint must hold it). Needs ``model_key`` ``model`` unless ``ema``.

    Returns:
      A :class:`Result`.

    Raises:
      AveragingError: for a request it refuses (nothing is written), such as checkpoints
        that hold nothing to average under ``model_key``, or not the requested weights.
      OutputError: for an output directory it refuses (nothing is written).
      CheckpointError: for a missing, truncated or corrupt checkpoint (nothing is written).
    """
    check_model_key(model_key)
    weights = check_weights(weights)
    if weights != "ema" and model_key != "model":
        raise AveragingError(
            f"--weights {weights} reads the moving average of the model saved under 'model', "
            f"not under --model_key {model_key!r}"
        )
    checkpoints, metric, scores = _select(model_dir, selection, weights)
    _check_output(output_dir, checkpoints, model_dir)
    readers = [CheckpointReader(prefix) for prefix in checkpoints]
    try:
        averaged = _check_agreement(readers, model_key)
        sources, notes = _sources(readers, averaged, weights)
        newest = readers[-1]
        step = checkpoint_step(newest.prefix)
        name = f"ckpt-{step}"
        source_dir = model_dir if model_dir is not None else storage.split(checkpoints[-1])[0]
        description_path = storage.join(source_dir, MODEL_DESCRIPTION)
        description = storage.read(description_path) if storage.isfile(description_path) else None
        output.plan(output_dir, name, description, overwrite)
        for sentence in output.remove_dead_staging(output_dir):
            if log is not None:
                log(sentence)
        staging = output.make_staging(output_dir)
        try:
            writer = CheckpointWriter(storage.join(staging, name), newest.header)
            try:
                bytes_read = _average_into(writer, readers, averaged, sources, drop_optimizer, progress)
            finally:
                writer.close()
            if description is not None:
                storage.write(storage.join(staging, MODEL_DESCRIPTION), description)
            target = output.plan(output_dir, name, description, overwrite)  # as it is now
            output.write_state(staging, name, target.listed)
            output.publish(staging, target)
        except BaseException:
            if storage.exists(staging):
                storage.rmtree(staging)
            raise
    finally:
        for reader in readers:
            reader.close()
    return Result(
        checkpoints=checkpoints,
        output_dir=output_dir,
        checkpoint_prefix=storage.join(output_dir, name),
        step=step,
        num_averaged=len(averaged),
        bytes_read=bytes_read,
        weights=weights,
        metric=metric,
        scores=scores,
        notes=notes,
    )


__all__ = [
    "AveragingError",
    "CheckpointError",
    "OutputError",
    "Result",
    "Selection",
    "average_checkpoints",
    "check_weights",
    "checkpoint_step",
    "listed_checkpoints",
    "recorded_metrics",
    "resolve_metric",
    "select_checkpoints",
]
