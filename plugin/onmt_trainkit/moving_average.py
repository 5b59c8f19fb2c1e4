"""An exponential moving average (EMA) of the weights whose state lives in the checkpoint."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import tensorflow as tf

from onmt_trainkit.errors import check_number


def effective_decay(decay: float, step: int | tf.Tensor) -> tf.Tensor:
    r"""Returns the decay applied by the update at training step ``step`` (float32).

    .. math:: d_t = \min\left(d, \frac{1 + t}{10 + t}\right)

    as in ``tf.train.ExponentialMovingAverage(decay, num_updates=step)``, so the average
    warms up quickly at the start of training.
    """
    step = tf.cast(step, tf.float32)
    return tf.minimum(tf.constant(decay, tf.float32), (1.0 + step) / (10.0 + step))


def check_decay(decay: object, key: str = "decay") -> float:
    """Checks that ``decay`` is a number in the open interval (0, 1)."""
    return check_number(key, decay, minimum=0, maximum=1, min_inclusive=False, max_inclusive=False)


def _move_towards(averages: Sequence[tf.Variable], variables: Sequence[tf.Variable], rate: tf.Tensor) -> None:
    """``a -= (a - w) * rate`` for each average a and variable w (as TensorFlow's EMA does)."""
    for average, variable in zip(averages, variables):
        average.assign_sub((average - variable) * tf.cast(rate, average.dtype), read_value=False)


# Compiled with XLA, each update is one pass over memory (read a and w, write a) instead of
# three; the update is bound by memory bandwidth. Two groups of weights run in parallel.
_fused_move_towards = tf.function(_move_towards, jit_compile=True)


class MovingAverageState(tf.Module):
    """The moving average's variables, as a trackable object for ``tf.train.Checkpoint``.

    Between checkpoint saves ``weights`` hold the average; :meth:`MovingAverage.shadow_variables`
    exchanges them with the model's, so while a checkpoint is written the model holds the
    average and ``weights`` hold the training weights. A checkpoint therefore stores the
    average under the model's own names (what inference, export and averaging read) and
    the training weights beside it, under ``moving_average/weights``.
    """

    def __init__(self, variables: Sequence[tf.Variable]):
        super().__init__(name="moving_average")
        self.weights = [
            tf.Variable(variable.read_value(), trainable=False, name="weight")
            for variable in variables
        ]
        self.num_updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="num_updates")


class MovingAverage:
    r"""An exponential moving average of variables: a drop-in for OpenNMT-tf's class.

    The update at training step :math:`t`, for each variable :math:`w` and its average
    :math:`a`, is

    .. math:: a \leftarrow a - (a - w)(1 - d_t), \quad d_t = \min(d, (1 + t) / (10 + t))

    except the first update after construction, which copies the weights (:math:`d_t = 0`).
    For variables created outside a distribution strategy, the update is compiled with XLA
    into one pass over memory.
    For a run that creates the average after its first step, as OpenNMT-tf does, the
    values are those of ``opennmt.training.MovingAverage``. The state (the average and the
    number of updates) is a trackable :attr:`state` that can be saved in a checkpoint.
    """

    def __init__(self, variables: Sequence[tf.Variable], step: tf.Variable, decay: float = 0.9999):
        """Initializes the moving average.

        Args:
          variables: The variables to average.
          step: The training step counter.
          decay: The decay d, in (0, 1); usually close to 1, e.g. 0.9999.

        Raises:
          TypeError: if ``step`` is not a ``tf.Variable``.
          ConfigError: if ``decay`` is not in (0, 1).
        """
        if not isinstance(step, tf.Variable):
            raise TypeError("step should be a tf.Variable")
        self._decay = check_decay(decay)
        self._variables = list(variables)
        self._step = step
        with tf.init_scope():
            self.state = MovingAverageState(self._variables)
        sizes = [variable.shape.num_elements() or 0 for variable in self._variables]
        by_size = sorted(range(len(sizes)), key=lambda i: -sizes[i])
        self._groups = [group for group in (by_size[0::2], by_size[1::2]) if group]
        # Compiled, the exchange hands buffers over instead of copying them. Variables made
        # under a distribution strategy are updated and exchanged with plain operations.
        self._distributed = tf.distribute.has_strategy()
        self._exchange = self._exchange_values if self._distributed else tf.function(self._exchange_values)

    @property
    def decay(self) -> float:
        """The decay d."""
        return self._decay

    @property
    def num_updates(self) -> int:
        """The number of updates applied since the average started."""
        return int(self.state.num_updates.numpy())

    def update(self) -> tf.Tensor:
        """Updates the average from the current variables; works in eager and graph mode.

        Returns:
          The decay :math:`d_t` that was applied (0 for the first update).
        """
        def _average() -> tf.Tensor:
            decay = effective_decay(self._decay, self._step)
            if self._distributed:
                _move_towards(self.state.weights, self._variables, 1.0 - decay)
            else:
                for group in self._groups:  # independent: TensorFlow runs them in parallel
                    _fused_move_towards([self.state.weights[i] for i in group],
                                        [self._variables[i] for i in group], 1.0 - decay)
            return decay

        def _copy() -> tf.Tensor:
            for average, variable in zip(self.state.weights, self._variables):
                average.assign(variable, read_value=False)
            return tf.constant(0.0)

        decay = tf.cond(self.state.num_updates > 0, _average, _copy)
        self.state.num_updates.assign_add(1, read_value=False)
        return decay

    def exchange(self) -> None:
        """Exchanges the values of the variables and of their average."""
        self._exchange()

    def _exchange_values(self) -> None:
        for average, variable in zip(self.state.weights, self._variables):
            value = variable.read_value()
            variable.assign(average.read_value(), read_value=False)
            average.assign(value, read_value=False)

    @contextlib.contextmanager
    def shadow_variables(self) -> Iterator[None]:
        """Puts the average in the variables, and the training weights back on exit.

        The training weights are restored even if the body raises.
        """
        self.exchange()
        try:
            yield
        finally:
            self.exchange()
