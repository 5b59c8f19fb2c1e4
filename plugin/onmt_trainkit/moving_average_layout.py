"""Where the moving average keeps its state in a checkpoint: the tensor names, read without
TensorFlow.

With ``train.moving_average_decay: [d1, d2, ...]``, every checkpoint that the plugin writes holds
(each variable's value is stored under its name followed by ``/.ATTRIBUTES/VARIABLE_VALUE``):

====================================  ================================================================
``model/<path>``                      the average of the first decay d1: what ``onmt-main infer``,
                                      ``eval``, ``export`` and checkpoint averaging read
``moving_average/raw/model/<path>``   the training weights, for every averaged variable
``moving_average/<D>/num_updates``    for each decay: the updates applied to its average (int64; 0
                                      until the average starts)
``moving_average/<D>/model/<path>``   for each decay but d1: its average
``optimizer/...`` and slots           the optimizer, whose moments belong to the training weights
====================================  ================================================================

``<path>`` is the variable's object path in the model, exactly as in its own ``model/<path>``
name. ``<D>`` is the decay as Python writes the float (``repr``: ``0.9999``, ``1e-05``), escaped
as TensorFlow escapes object names: each ``.`` doubled (``0..9999``), a ``/`` written ``.S``.
Averaged variables are the trainable ones; a variable that is not averaged (not trainable, e.g.
frozen by ``params.freeze_layers``) appears only under ``model/``: its training weights and
every average are that one value. So, for each model variable ``model/<path>``:

- the training weights are ``moving_average/raw/model/<path>`` if present, else ``model/<path>``;
- the average of decay D is ``moving_average/<D>/model/<path>`` if present, else ``model/<path>``
  (d1's node holds no weights: they are in ``model/``).

A checkpoint written without the moving average has no ``moving_average/`` name: its model
weights are its training weights. A checkpoint written before onmt-trainkit 0.2.0 (one decay, state
by position) holds ``moving_average/weights/<N>`` (the training weights of the model's N-th
trainable variable, by position) and ``moving_average/num_updates``; its decay is not recorded.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
"""What TensorFlow appends to an object path to name the variable's value."""

ROOT = "moving_average"
"""The name of the moving average's state in the checkpoint."""

RAW = "raw"
"""The node holding the training weights."""

NUM_UPDATES = "num_updates"
"""Each decay's count of updates."""

MODEL_PREFIX = "model/"
_SLOT = "/.OPTIMIZER_SLOT/"
_OLD_WEIGHTS = f"{ROOT}/weights/"

OLD_NUM_UPDATES = f"{ROOT}/{NUM_UPDATES}{VALUE_SUFFIX}"
"""The name of the number of updates in the layout before onmt-trainkit 0.2.0."""

BY_NAME = "by name"
BY_POSITION = "by position (before onmt-trainkit 0.2.0)"
NONE = "none"


class LayoutError(ValueError):
    """A request for weights that a checkpoint does not hold."""


def escape(name: str) -> str:
    """Escapes one object name as TensorFlow does in checkpoint keys."""
    return name.replace(".", "..").replace("/", ".S")


def unescape(name: str) -> str:
    """Inverts :func:`escape`."""
    result, index = [], 0
    while index < len(name):
        if name[index] == "." and index + 1 < len(name):
            result.append("/" if name[index + 1] == "S" else name[index + 1])
            index += 2
        else:
            result.append(name[index])
            index += 1
    return "".join(result)


def decay_name(decay: float) -> str:
    """The decay as written in names, unescaped: ``repr(float(decay))``, e.g. ``0.9999``."""
    return repr(float(decay))


def raw_name(model_name: str) -> str:
    """The name of the training weights of the variable named ``model_name`` (``model/...``)."""
    return f"{ROOT}/{RAW}/{model_name}"


def average_name(decay: float, model_name: str) -> str:
    """The name of the average of ``decay`` of the variable ``model_name``, for every decay
    but the one in ``model/``."""
    return f"{ROOT}/{escape(decay_name(decay))}/{model_name}"


def num_updates_name(decay: float) -> str:
    """The name of the number of updates applied to the average of ``decay``."""
    return f"{ROOT}/{escape(decay_name(decay))}/{NUM_UPDATES}{VALUE_SUFFIX}"


def old_weight_name(index: int) -> str:
    """The name of the training weights of the ``index``-th trainable variable, in the layout
    written before onmt-trainkit 0.2.0."""
    return f"{_OLD_WEIGHTS}{index}{VALUE_SUFFIX}"


def layout(names: Collection[str]) -> str:
    """Returns :data:`BY_NAME`, :data:`BY_POSITION` or :data:`NONE` (no moving average)."""
    if any(name.startswith(f"{ROOT}/{RAW}/") for name in names) or held_decays(names):
        return BY_NAME
    if OLD_NUM_UPDATES in names:
        return BY_POSITION
    return NONE


def old_weight_count(names: Collection[str]) -> int:
    """The number of training weights kept by position (the layout before onmt-trainkit 0.2.0)."""
    return sum(1 for name in names if name.startswith(_OLD_WEIGHTS) and name.endswith(VALUE_SUFFIX))


def model_variable_names(names: Iterable[str]) -> list[str]:
    """The names of the model's variable values (``model/...``, optimizer slots left out)."""
    return sorted(
        name for name in names
        if name.startswith(MODEL_PREFIX) and name.endswith(VALUE_SUFFIX) and _SLOT not in name
    )


def held_decays(names: Iterable[str]) -> list[float]:
    """The decays whose averages the checkpoint holds (by-name layout), in increasing order."""
    decays = set()
    for name in names:
        parts = name.split("/")
        if len(parts) == 5 and parts[0] == ROOT and parts[2] == NUM_UPDATES and name.endswith(VALUE_SUFFIX):
            try:
                decays.add(float(unescape(parts[1])))
            except ValueError:
                continue
    return sorted(decays)


def model_decay(names: Collection[str]) -> float | None:
    """The decay whose average is in ``model/``: the held decay whose node holds no weights.

    Returns ``None`` when no average is held, or when no variable is averaged (then every
    average is ``model/`` and no decay is singled out).
    """
    bare = [d for d in held_decays(names)
            if not any(n.startswith(f"{ROOT}/{escape(decay_name(d))}/{MODEL_PREFIX}") for n in names)]
    return bare[0] if len(bare) == 1 else None


def parse_weights(weights: str) -> tuple[str, float | None]:
    """Parses a weights request: ``raw``, ``ema`` or ``ema:<decay>``.

    Returns:
      ``("raw", None)``, ``("ema", None)`` or ``("ema", decay)``.

    Raises:
      LayoutError: naming the value and what is allowed.
    """
    if weights in ("raw", "ema"):
        return weights, None
    if isinstance(weights, str) and weights.startswith("ema:"):
        try:
            decay = float(weights[4:])
        except ValueError:
            decay = None
        if decay is not None and 0 < decay < 1:
            return "ema", decay
    raise LayoutError(f"weights must be raw, ema or ema:<decay> with 0 < decay < 1, got {weights!r}")


def weight_names(names: Collection[str], weights: str = "ema") -> dict[str, str]:
    """Maps each model variable to the tensor that holds the requested weights.

    Args:
      names: The checkpoint's tensor names.
      weights: ``raw`` (the training weights), ``ema`` (what ``model/`` holds: the average of
        the first decay, or the training weights of a run without moving average) or
        ``ema:<decay>`` (the average of that decay).

    Returns:
      ``{model variable name: name of the tensor holding its requested value}``, for every
      ``model/...`` variable value of the checkpoint (optimizer slots left out).

    Raises:
      LayoutError: for a weights request the checkpoint cannot answer, naming what it holds.
    """
    kind, decay = parse_weights(weights)
    names = set(names)
    model_names = model_variable_names(names)
    if kind == "ema" and decay is None:
        return {name: name for name in model_names}
    found = layout(names)
    if found == BY_POSITION:
        raise LayoutError(
            f"weights {weights}: the checkpoint keeps its moving average as onmt-trainkit did before 0.2.0 "
            "(training weights by position, decay not recorded): only 'ema' (its model weights) can be "
            "read without the model; resume it once with the plugin to rewrite it by name"
        )
    if kind == "raw":
        return {name: raw_name(name) if raw_name(name) in names else name for name in model_names}
    held = held_decays(names)
    if decay not in held:
        holds = ", ".join(f"ema:{decay_name(d)}" for d in held) if held else "no moving average"
        raise LayoutError(f"weights {weights}: the checkpoint holds no average of decay {decay_name(decay)}; "
                          f"it holds {holds}")
    return {name: average_name(decay, name) if average_name(decay, name) in names else name
            for name in model_names}
