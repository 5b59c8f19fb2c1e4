r"""Exponential moving averages (EMA) of the weights, several decays at once, whose state lives
in the checkpoint under the model's own variable names.

For each decay :math:`d` and each averaged variable :math:`w` with its average :math:`a`, the
update at training step :math:`t` (the step count after the optimizer's update; the first
step is 1), with start step :math:`s` and period :math:`k`:

.. math::

    t \ge s \text{ and } (t - s) \bmod k = 0: \quad
    a \leftarrow a - (a - w)(1 - d_t^k), \quad d_t = \min\left(d, \frac{1 + t}{10 + t}\right)

and no update at other steps. The first update of each average copies the weights
(:math:`a \leftarrow w`); until then the average is the weights. With :math:`s = 0, k = 1`
this is ``tf.train.ExponentialMovingAverage(d, num_updates=step)``, OpenNMT-tf's
``train.moving_average_decay``; :math:`d_t^k` keeps the average's time constant in steps
when it is updated every :math:`k` steps.

The checkpoint layout (tensor names) is described in
:mod:`onmt_trainkit.moving_average_layout`, which reads it without TensorFlow. In short:
``model/<path>`` holds the first decay's average (swapped in while the checkpoint is
written), ``moving_average/raw/model/<path>`` the training weights,
``moving_average/<decay>/num_updates`` each decay's update count and
``moving_average/<decay>/model/<path>`` the other decays' averages.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from onmt_trainkit import moving_average_layout as layout
from onmt_trainkit.errors import check_number, invalid


class StateMismatchError(ValueError):
    """A checkpoint's moving-average state that cannot be restored into the model."""


def effective_decay(decay: float, step: int | tf.Tensor, every: int = 1) -> tf.Tensor:
    r"""Returns the decay applied by an update at training step ``step`` (float32).

    .. math:: d_t^k, \quad d_t = \min\left(d, \frac{1 + t}{10 + t}\right)

    as in ``tf.train.ExponentialMovingAverage(decay, num_updates=step)`` for ``every`` k = 1,
    so the average warms up quickly at the start of training.
    """
    step = tf.cast(step, tf.float32)
    decay_t = tf.minimum(tf.constant(decay, tf.float32), (1.0 + step) / (10.0 + step))
    return decay_t if every == 1 else tf.pow(decay_t, float(every))


def check_decay(decay: object, key: str = "decay") -> float:
    """Checks that ``decay`` is a number in the open interval (0, 1)."""
    return check_number(key, decay, minimum=0, maximum=1, min_inclusive=False, max_inclusive=False)


def check_decays(value: object, key: str = "decay") -> tuple[float, ...]:
    """Checks a decay or a non-empty list of distinct decays, each in (0, 1).

    Returns:
      The decays as floats, in the order given.
    """
    if not isinstance(value, (list, tuple)):
        return (float(check_decay(value, key)),)
    if not value:
        raise invalid(key, value, "a number > 0 and < 1, or a non-empty list of such numbers")
    decays = tuple(float(check_decay(item, f"{key}[{index}]")) for index, item in enumerate(value))
    repeated = [d for d, count in collections.Counter(decays).items() if count > 1]
    if repeated:
        raise invalid(key, value, f"a list of distinct decays ({repeated[0]!r} is given twice)")
    return decays


def variable_names(root: tf.Module, root_name: str = "model") -> dict[Any, str]:
    """Returns ``{variable.ref(): name}`` for the variables under ``root``, named as a
    checkpoint that saves ``root`` under ``root_name`` names them (without
    ``/.ATTRIBUTES/VARIABLE_VALUE``): the first path of a breadth-first walk, as TensorFlow
    writes them."""
    view = tf.train.TrackableView(root)
    paths = {id(root): root_name}
    queue = collections.deque([root])
    names = {}
    while queue:
        node = queue.popleft()
        for name, child in view.children(node).items():
            if id(child) in paths:
                continue
            paths[id(child)] = f"{paths[id(node)]}/{layout.escape(name)}"
            queue.append(child)
            if isinstance(child, tf.Variable):
                names[child.ref()] = paths[id(child)]
    return names


class CheckpointTensors:
    """The tensors of a checkpoint, by name, read one at a time."""

    def __init__(self, path: str):
        self.path = path
        self._reader = tf.train.load_checkpoint(path)
        self.shapes: dict[str, list[int]] = self._reader.get_variable_to_shape_map()
        self.names = set(self.shapes)

    def read(self, name: str) -> np.ndarray:
        return self._reader.get_tensor(name)


def _checked(checkpoint: CheckpointTensors, name: str, variable: tf.Variable, variable_name: str) -> np.ndarray:
    if name not in checkpoint.shapes:
        raise StateMismatchError(f"{checkpoint.path} has no {name} for the model's variable {variable_name}")
    shape = list(checkpoint.shapes[name])
    if shape != variable.shape.as_list():
        raise StateMismatchError(
            f"{checkpoint.path}: {name} has shape {shape} but the model's variable {variable_name} has "
            f"shape {variable.shape.as_list()}; the moving average cannot be restored into it"
        )
    return checkpoint.read(name)


def _old_weight_names(checkpoint: CheckpointTensors, trainable: Sequence[tf.Variable]) -> list[str]:
    count = layout.old_weight_count(checkpoint.names)
    if count != len(trainable):
        raise StateMismatchError(
            f"{checkpoint.path} keeps the training weights of {count} trainable variables by position "
            f"(the layout before onmt-trainkit 0.2.0) but the model has {len(trainable)}: resume it once with the "
            "model and params.freeze_layers it was trained with (its next checkpoints keep them by name)"
        )
    return [layout.old_weight_name(index) for index in range(count)]


def holds_training_weights(names: set[str]) -> bool:
    """Whether a checkpoint holds training weights beside its model weights (the average)."""
    return layout.layout(names) != layout.NONE


def restore_training_weights(
    checkpoint: CheckpointTensors,
    variables: Mapping[str, tf.Variable],
    trainable: Sequence[tf.Variable],
) -> int:
    """Assigns the training weights that ``checkpoint`` holds beside its average.

    Args:
      checkpoint: The checkpoint, whose ``model/`` values the variables already hold.
      variables: The model's variables by checkpoint name (``model/...``).
      trainable: The model's trainable variables, in order (for the layout before onmt-trainkit 0.2.0).

    Returns:
      The number of variables assigned.

    Raises:
      StateMismatchError: on a shape mismatch, or a by-position layout that does not fit.
    """
    found = layout.layout(checkpoint.names)
    if found == layout.BY_POSITION:
        by_name = {id(v): n for n, v in variables.items()}
        pairs = [(name, variable, by_name.get(id(variable), name))
                 for name, variable in zip(_old_weight_names(checkpoint, trainable), trainable)]
    else:
        pairs = [(layout.raw_name(name + layout.VALUE_SUFFIX), variable, name)
                 for name, variable in variables.items()]
        pairs = [pair for pair in pairs if pair[0] in checkpoint.names]
    values = [_checked(checkpoint, name, variable, variable_name) for name, variable, variable_name in pairs]
    for (_, variable, _), value in zip(pairs, values):
        variable.assign(value, read_value=False)
    return len(pairs)


@dataclasses.dataclass
class RestoreReport:
    """What :meth:`MovingAverage.restore` took from a checkpoint."""

    checkpoint: str
    layout: str
    num_updates: dict[float, int]
    """The decays restored, with their number of updates."""
    new_decays: list[float]
    """Decays the checkpoint does not hold: their averages start at their next update."""
    dropped_decays: list[float]
    """Decays the checkpoint holds that are no longer asked for."""
    missing: list[str]
    """Averaged variables without a saved average: theirs start from their current value."""
    extra: list[str]
    """Variables whose saved averages were ignored: the model no longer averages them."""

    def lines(self) -> list[str]:
        """The report, one log line each."""
        if self.layout == layout.NONE:
            return [f"{self.checkpoint} has no moving average state; the averages start from the current weights"]
        counts = ", ".join(f"decay {layout.decay_name(d)}: {n} update{'' if n == 1 else 's'}"
                           for d, n in self.num_updates.items())
        lines = [f"restored the training weights and the averages ({counts}) from {self.checkpoint}"
                 + (f", written {self.layout}" if self.layout != layout.BY_NAME else "")]
        for decay in self.new_decays:
            lines.append(f"{self.checkpoint} holds no average of decay {layout.decay_name(decay)}: "
                         "it starts from the weights at its next update")
        for decay in self.dropped_decays:
            lines.append(f"the average of decay {layout.decay_name(decay)} in {self.checkpoint} is dropped "
                         "(not in train.moving_average_decay)")
        if self.missing:
            lines.append(f"{len(self.missing)} averaged variables have no average in {self.checkpoint}; "
                         f"theirs start from their current values: {', '.join(self.missing)}")
        if self.extra:
            lines.append(f"{self.checkpoint} holds averages of {len(self.extra)} variables that are no longer "
                         f"averaged; ignored: {', '.join(self.extra)}")
        return lines


class _Node(tf.__internal__.tracking.Trackable):
    """A node of the state's object graph; its children are saved under their names."""

    def __init__(self, children: dict[str, Any] | None = None):
        self._children: dict[str, Any] = dict(children or {})

    def _trackable_children(self, save_type: Any = "checkpoint", **kwargs: Any) -> dict[str, Any]:
        return dict(self._children)

    def add(self, name: str, child: Any) -> Any:
        if name in self._children:
            raise ValueError(f"two moving-average objects are named {name!r}")
        self._children[name] = child
        return child

    def node(self, name: str) -> _Node:
        existing = self._children.get(name)
        return existing if isinstance(existing, _Node) else self.add(name, _Node())


def _tree(names: Sequence[str], variables: Sequence[tf.Variable]) -> _Node:
    """The variables, each at its object path (escaped names separated by ``/``)."""
    root = _Node()
    for name, variable in zip(names, variables):
        parts = [layout.unescape(part) for part in name.split("/")]
        node = root
        for part in parts[:-1]:
            node = node.node(part)
        node.add(parts[-1], variable)
    return root


# The update of a group of variables for all decays. Compiled with XLA, each average's update
# is one loop over memory (read w and a, write a) instead of three: K decays cost K times one
# decay's memory traffic, and the update is bound by memory bandwidth.
def _move_towards(
    averages: Sequence[Sequence[tf.Variable]],
    variables: Sequence[tf.Variable],
    rates: Sequence[tf.Tensor],
    started: Sequence[tf.Tensor],
) -> None:
    """``a -= (a - w) * rate`` for each average a of each decay and variable w (as TensorFlow's
    EMA does), or ``a = w`` for the decays that have not started."""
    for index, variable in enumerate(variables):
        weight = variable.read_value()
        for decay_averages, rate, has_started in zip(averages, rates, started):
            average = decay_averages[index]
            value = average.read_value()
            moved = value - (value - weight) * tf.cast(rate, value.dtype)
            average.assign(tf.where(has_started, moved, weight), read_value=False)


_fused_move_towards = tf.function(_move_towards, jit_compile=True)


class MovingAverage:
    r"""Exponential moving averages of variables, one per decay: a drop-in for OpenNMT-tf's
    ``opennmt.training.MovingAverage`` (``update()``, ``shadow_variables()``).

    See the module docstring for the update. For variables created outside a distribution
    strategy, the update is compiled with XLA: one pass over memory per average. For a
    run that creates the average after its first step, as OpenNMT-tf does, the values are
    those of ``opennmt.training.MovingAverage``. The state (the averages and their numbers of
    updates) is the trackable :attr:`state`, saved under the variables' own names.
    """

    def __init__(
        self,
        variables: Sequence[tf.Variable],
        step: tf.Variable,
        decay: float | Sequence[float] = 0.9999,
        start_step: int = 0,
        every: int = 1,
        names: Sequence[str] | None = None,
    ):
        """Initializes the moving averages from the current values of the variables.

        Args:
          variables: The variables to average.
          step: The training step counter.
          decay: The decay d in (0, 1), usually close to 1 (e.g. 0.9999), or a list of
            distinct decays; the first is the one :meth:`shadow_variables` swaps in by default.
          start_step: The first step s that updates the averages (it copies the weights).
          every: The period k of the updates, in steps.
          names: Each variable's checkpoint name (``model/...``, escaped object names
            separated by ``/``), under which its state is saved; by default
            ``variables/<index>``.

        Raises:
          TypeError: if ``step`` is not a ``tf.Variable``.
          ConfigError: if ``decay``, ``start_step`` or ``every`` is out of range.
          ValueError: if ``names`` does not name each variable once.
        """
        if not isinstance(step, tf.Variable):
            raise TypeError("step should be a tf.Variable")
        self._decays = check_decays(decay)
        self._start_step = check_number("start_step", start_step, minimum=0, integer=True)
        self._every = check_number("every", every, minimum=1, integer=True)
        self._variables = list(variables)
        self._names = list(names) if names is not None else [f"variables/{i}" for i in range(len(self._variables))]
        if len(self._names) != len(self._variables) or len(set(self._names)) != len(self._names):
            raise ValueError("names must name each variable once")
        if any(name.split("/")[0] == layout.NUM_UPDATES for name in self._names):
            raise ValueError(f"a variable name cannot start with {layout.NUM_UPDATES!r}")
        self._step = step
        with tf.init_scope():
            self._averages = [
                [tf.Variable(v.read_value(), trainable=False, name="average") for v in self._variables]
                for _ in self._decays
            ]
            self._num_updates = [
                tf.Variable(0, dtype=tf.int64, trainable=False, name="num_updates") for _ in self._decays
            ]
        self.state = self._state()
        sizes = [variable.shape.num_elements() or 0 for variable in self._variables]
        by_size = sorted(range(len(sizes)), key=lambda i: -sizes[i])
        self._groups = [group for group in (by_size[0::2], by_size[1::2]) if group]
        # Compiled, the exchange hands buffers over instead of copying them. Variables made
        # under a distribution strategy are updated and exchanged with plain operations.
        self._distributed = tf.distribute.has_strategy()
        self._exchanges = [
            self._exchanger(index) if self._distributed else tf.function(self._exchanger(index))
            for index in range(len(self._decays))
        ]

    def _state(self) -> _Node:
        state = _Node()
        state.add(layout.RAW, _tree(self._names, self._averages[0]))
        for index, decay in enumerate(self._decays):
            node = _tree(self._names, self._averages[index]) if index > 0 else _Node()
            node.add(layout.NUM_UPDATES, self._num_updates[index])
            state.add(layout.decay_name(decay), node)
        return state

    @property
    def decay(self) -> float:
        """The first decay: the average that :meth:`shadow_variables` swaps in by default."""
        return self._decays[0]

    @property
    def decays(self) -> tuple[float, ...]:
        """The decays, first one first."""
        return self._decays

    @property
    def start_step(self) -> int:
        return self._start_step

    @property
    def every(self) -> int:
        return self._every

    @property
    def num_updates(self) -> int:
        """The number of updates applied to the first decay's average."""
        return self.num_updates_of(self._decays[0])

    def num_updates_of(self, decay: float) -> int:
        """The number of updates applied to the average of ``decay``."""
        return int(self._num_updates[self._index(decay)].numpy())

    def average(self, decay: float | None = None) -> list[tf.Variable]:
        """The variables holding the average of ``decay`` (the first by default), outside
        :meth:`shadow_variables`."""
        return self._averages[self._index(decay)]

    def _index(self, decay: float | None) -> int:
        if decay is None:
            return 0
        if float(decay) not in self._decays:
            raise ValueError(f"no average of decay {decay!r}; decays: {', '.join(map(repr, self._decays))}")
        return self._decays.index(float(decay))

    def updates_at(self, step: int | tf.Tensor) -> tf.Tensor:
        """Whether the training step ``step`` updates the averages (a boolean tensor)."""
        step = tf.cast(step, tf.int64)
        return tf.logical_and(step >= self._start_step, (step - self._start_step) % self._every == 0)

    def update(self) -> tf.Tensor:
        """Updates the averages from the current variables if the step asks for it; works in
        eager and graph mode.

        Returns:
          The decay :math:`d_t^k` applied to the first decay's average: 0 for its first
          update (a copy), 1 at a step without update.
        """
        step = self._step.value()

        def _apply() -> tf.Tensor:
            decays = [effective_decay(decay, step, self._every) for decay in self._decays]
            started = [count > 0 for count in self._num_updates]
            rates = [1.0 - decay for decay in decays]
            if self._distributed:
                _move_towards(self._averages, self._variables, rates, started)
            else:
                for group in self._groups:  # independent: TensorFlow runs them in parallel
                    _fused_move_towards([[averages[i] for i in group] for averages in self._averages],
                                        [self._variables[i] for i in group], rates, started)
            for count in self._num_updates:
                count.assign_add(1, read_value=False)
            return tf.where(started[0], decays[0], 0.0)

        return tf.cond(self.updates_at(step), _apply, lambda: tf.constant(1.0))

    def _exchanger(self, index: int):
        averages, count = self._averages[index], self._num_updates[index]

        def _swap() -> tf.Tensor:
            for average, variable in zip(averages, self._variables):
                value = variable.read_value()
                variable.assign(average.read_value(), read_value=False)
                average.assign(value, read_value=False)
            return tf.constant(True)

        def _copy() -> tf.Tensor:  # an average that has not started is the weights
            for average, variable in zip(averages, self._variables):
                average.assign(variable.read_value(), read_value=False)
            return tf.constant(False)

        return lambda: tf.cond(count > 0, _swap, _copy)

    def exchange(self, decay: float | None = None) -> None:
        """Exchanges the values of the variables and of the average of ``decay`` (the first
        by default). An average that has not started takes the variables' values, which
        keep theirs."""
        self._exchanges[self._index(decay)]()

    @contextlib.contextmanager
    def shadow_variables(self, decay: float | None = None) -> Iterator[None]:
        """Puts the average of ``decay`` (the first by default) in the variables, and the
        training weights back on exit, even if the body raises.

        Inside, every average that has not started holds the training weights (so a
        checkpoint written inside saves them as that average).
        """
        index = self._index(decay)
        for other in range(len(self._decays)):
            if other != index and int(self._num_updates[other].numpy()) == 0:
                self._exchanges[other]()  # copies the weights
        self._exchanges[index]()
        try:
            yield
        finally:
            self._exchanges[index]()

    def restore(self, checkpoint: CheckpointTensors) -> RestoreReport:
        """Restores the averages and their numbers of updates from ``checkpoint``, by name.

        Call it once the variables hold their training weights. For each decay: its average
        of a variable is ``moving_average/<decay>/<name>``, or ``<name>`` itself for the
        decay the checkpoint swapped into the model; a decay the checkpoint does not hold,
        and a variable without a saved average, start from the current weights. In
        the layout before onmt-trainkit 0.2.0 (one average, by position), the average in ``model/``
        is taken as the first decay's.

        Raises:
          StateMismatchError: on a shape mismatch, or a by-position layout that does not fit.
        """
        names = checkpoint.names
        found = layout.layout(names)
        report = RestoreReport(checkpoint.path, found, {}, [], [], [], [])
        if found == layout.NONE:
            return report
        values = [[variable.read_value() for variable in self._variables] for _ in self._decays]
        counts = [0] * len(self._decays)
        if found == layout.BY_POSITION:
            _old_weight_names(checkpoint, self._variables)
            values[0] = [_checked(checkpoint, name + layout.VALUE_SUFFIX, variable, name)
                         for name, variable in zip(self._names, self._variables)]
            counts[0] = int(checkpoint.read(layout.OLD_NUM_UPDATES))
            report.num_updates[self._decays[0]] = counts[0]
            report.new_decays = list(self._decays[1:])
        else:
            held = layout.held_decays(names)
            in_model = layout.model_decay(names)
            report.dropped_decays = [d for d in held if d not in self._decays]
            missing = set()
            for index, decay in enumerate(self._decays):
                if decay not in held:
                    report.new_decays.append(decay)
                    continue
                counts[index] = int(checkpoint.read(layout.num_updates_name(decay)))
                report.num_updates[decay] = counts[index]
                for position, (name, variable) in enumerate(zip(self._names, self._variables)):
                    model_name = name + layout.VALUE_SUFFIX
                    saved = layout.average_name(decay, model_name)
                    if decay == in_model and layout.raw_name(model_name) in names:
                        saved = model_name  # the average swapped into the model
                    if saved in names:
                        values[index][position] = _checked(checkpoint, saved, variable, name)
                    else:
                        missing.add(name)
            report.missing = [name for name in self._names if name in missing]
            report.extra = self._extra(names, [d for d in held if d in self._decays])
        for averages, decay_values, count, value in zip(self._averages, values, self._num_updates, counts):
            for average, decay_value in zip(averages, decay_values):
                average.assign(decay_value, read_value=False)
            count.assign(value, read_value=False)
        return report

    def _extra(self, names: set[str], decays: list[float]) -> list[str]:
        averaged = {name + layout.VALUE_SUFFIX for name in self._names}
        prefixes = [f"{layout.ROOT}/{layout.RAW}/"] + [
            f"{layout.ROOT}/{layout.escape(layout.decay_name(d))}/" for d in decays
        ]
        extra = set()
        for name in names:
            for prefix in prefixes:
                if name.startswith(prefix + layout.MODEL_PREFIX) and name[len(prefix):] not in averaged:
                    extra.add(name[len(prefix):-len(layout.VALUE_SUFFIX)])
        return sorted(extra)
