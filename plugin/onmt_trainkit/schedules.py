"""Learning-rate schedules: pure functions of the training step.

Each class validates its arguments in ``__init__``, implements ``get_config`` (and so
``from_config``), and accepts a scalar step or a vector of steps.
"""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Mapping

import numpy as np
import opennmt
import tensorflow as tf

from onmt_trainkit import keys
from onmt_trainkit.errors import ConfigError, check_number, unknown_name

_Schedule = tf.keras.optimizers.schedules.LearningRateSchedule
_register = tf.keras.utils.register_keras_serializable(package="onmt_trainkit")


@_register
class NoamDecay(opennmt.schedules.NoamDecay):
    r"""The schedule of "Attention Is All You Need" (https://arxiv.org/abs/1706.03762).

    With :math:`t = \text{step} + 1`:

    .. math::

        \text{lr}(t) = \text{scale} \cdot d^{-0.5}
                       \cdot \min(t^{-0.5},\; t \cdot w^{-1.5})

    It rises linearly for ``warmup_steps`` (w) steps to its peak
    :math:`\text{scale} \cdot d^{-0.5} \cdot w^{-0.5}`, then decays as :math:`t^{-0.5}`.
    Values are identical to ``opennmt.schedules.NoamDecay`` for identical arguments, and it is
    one (a subclass), so code that checks for OpenNMT-tf's class accepts it. It adds checked
    arguments, kept as the Python numbers given, and ``get_config``.
    """

    def __init__(self, scale: float, model_dim: int, warmup_steps: int):
        """Initializes the schedule (in place of OpenNMT-tf's constructor, which casts to tensors).

        Args:
          scale: The scale constant (``params.learning_rate`` in OpenNMT-tf), > 0.
          model_dim: The model dimension d, > 0.
          warmup_steps: The number of warmup steps w, > 0.
        """
        self.scale = check_number("scale", scale, minimum=0, min_inclusive=False)
        self.model_dim = check_number("model_dim", model_dim, minimum=0, min_inclusive=False)
        self.warmup_steps = check_number(
            "warmup_steps", warmup_steps, minimum=0, min_inclusive=False
        )

    def __call__(self, step: Any) -> tf.Tensor:
        scale = tf.cast(self.scale, tf.float32)
        model_dim = tf.cast(self.model_dim, tf.float32)
        warmup_steps = tf.cast(self.warmup_steps, tf.float32)
        step = tf.cast(step + 1, tf.float32)
        return (
            scale
            * tf.pow(model_dim, -0.5)
            * tf.minimum(tf.pow(step, -0.5), step * tf.pow(warmup_steps, -1.5))
        )

    def get_config(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "model_dim": self.model_dim,
            "warmup_steps": self.warmup_steps,
        }


@_register
class Constant(_Schedule):
    r"""A constant learning rate: :math:`\text{lr}(s) = \text{learning\_rate}`.

    Used as the schedule behind a warmup when no ``decay_type`` is set.
    """

    def __init__(self, learning_rate: float):
        """Initializes the schedule.

        Args:
          learning_rate: The learning rate, >= 0.
        """
        self.learning_rate = check_number("learning_rate", learning_rate, minimum=0)

    def __call__(self, step: Any) -> tf.Tensor:
        step = tf.convert_to_tensor(step)
        return tf.fill(tf.shape(step), tf.constant(self.learning_rate, tf.float32))

    def get_config(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate}


DECAY_SHAPES = ("linear", "cosine", "1-sqrt")


@_register
class WarmupStableDecay(_Schedule):
    r"""Warmup-stable-decay ("trapezoidal"): constant, then a final decay.

    The warmup in front of it is the wrapper's (``params.warmup_steps``). With
    :math:`T` = ``total_steps``, :math:`D` = ``decay_steps`` (or, given ``decay_fraction``
    :math:`f`, :math:`D = \max(1, \lfloor f T + 1/2 \rfloor)`), the peak :math:`\eta`,
    the end value :math:`\eta_e` and :math:`p = \min(\max(s - (T - D), 0) / D, 1)`:

    .. math::

        \text{lr}(s) = \eta_e + (\eta - \eta_e) \cdot f(p), \quad
        f(p) = \begin{cases} 1 - p & \text{linear} \\
                             \tfrac{1}{2}(1 + \cos \pi p) & \text{cosine} \\
                             1 - \sqrt{p} & \text{1-sqrt} \end{cases}

    so the rate is :math:`\eta` until step :math:`T - D` and :math:`\eta_e` from step
    :math:`T` on. See Hägele et al., "Scaling Laws and Compute-Optimal Training Beyond
    Fixed Training Durations" (https://arxiv.org/abs/2405.18392) for the 1-sqrt shape.
    """

    def __init__(
        self,
        learning_rate: float,
        total_steps: int,
        decay_steps: int | None = None,
        decay_shape: str = "1-sqrt",
        end_learning_rate: float = 0.0,
        decay_fraction: float | None = None,
    ):
        """Initializes the schedule.

        Args:
          learning_rate: The stable (peak) learning rate, > 0.
          total_steps: The schedule's length T (after the wrapper's warmup), > 0.
          decay_steps: The length D of the final decay, 0 < D <= T; or give ``decay_fraction``.
          decay_shape: ``linear``, ``cosine`` or ``1-sqrt``.
          end_learning_rate: The value reached at the end, 0 <= value <= learning_rate.
          decay_fraction: The final decay as a fraction f of T, 0 < f <= 1, instead of
            ``decay_steps``: right for any length (``total_steps: max_step``).
        """
        self.learning_rate = check_number(
            "learning_rate", learning_rate, minimum=0, min_inclusive=False
        )
        self.total_steps = check_number(
            "total_steps", total_steps, minimum=0, min_inclusive=False, integer=True
        )
        if decay_steps is not None and decay_fraction is not None:
            raise ConfigError(
                f"decay_steps ({decay_steps!r}) and decay_fraction ({decay_fraction!r}) "
                "are both set; give one (decay_fraction: the decay's share of total_steps)"
            )
        if decay_fraction is not None:
            bounds = keys.plugin_key("params.decay_params.decay_fraction").bounds
            self.decay_fraction = check_number("decay_fraction", decay_fraction, **bounds)
            self.decay_steps = max(1, math.floor(self.decay_fraction * self.total_steps + 0.5))
        elif decay_steps is not None:
            self.decay_fraction = None
            self.decay_steps = check_number(
                "decay_steps", decay_steps, minimum=0, min_inclusive=False,
                maximum=total_steps, integer=True,
            )
        else:
            raise ConfigError(
                "decay_steps or decay_fraction is required by WarmupStableDecay "
                "(the length of the final decay, in steps or as a share of total_steps)"
            )
        if decay_shape not in DECAY_SHAPES:
            raise unknown_name("decay_shape", decay_shape, DECAY_SHAPES)
        self.decay_shape = decay_shape
        self.end_learning_rate = check_number(
            "end_learning_rate", end_learning_rate, minimum=0, maximum=learning_rate
        )

    def __call__(self, step: Any) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        start = float(self.total_steps - self.decay_steps)
        progress = tf.clip_by_value((step - start) / float(self.decay_steps), 0.0, 1.0)
        if self.decay_shape == "linear":
            factor = 1.0 - progress
        elif self.decay_shape == "cosine":
            factor = 0.5 * (1.0 + tf.cos(math.pi * progress))
        else:
            factor = 1.0 - tf.sqrt(progress)
        end = self.end_learning_rate
        return end + (self.learning_rate - end) * factor

    def get_config(self) -> dict[str, Any]:
        length = (
            {"decay_steps": self.decay_steps}
            if self.decay_fraction is None
            else {"decay_fraction": self.decay_fraction}
        )
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            **length,
            "decay_shape": self.decay_shape,
            "end_learning_rate": self.end_learning_rate,
        }


@_register
class ScheduleWrapper(_Schedule):
    r"""Adds a linear warmup, a delayed start, a step duration and a floor to any schedule.

    With the wrapped schedule S, W = ``warmup_steps``, :math:`w_0` =
    ``warmup_learning_rate``, ``step_start`` = a, ``step_duration`` = k and
    ``minimum_learning_rate`` = m:

    .. math::

        \text{lr}(s) = \begin{cases}
          w_0 + (S(0) - w_0) \cdot s / W & s < W \\
          \max\left(S\left(\left\lfloor \max(s - W - a, 0) / k \right\rfloor\right), m\right)
            & s \ge W
        \end{cases}

    With W = 0 this is ``opennmt.schedules.ScheduleWrapper``, value for value.
    """

    def __init__(
        self,
        schedule: _Schedule,
        step_start: int = 0,
        step_duration: int = 1,
        minimum_learning_rate: float = 0,
        warmup_steps: int = 0,
        warmup_learning_rate: float = 0,
    ):
        """Initializes the wrapper.

        Args:
          schedule: The wrapped ``LearningRateSchedule`` S.
          step_start: Hold S at S(0) for this many steps after the warmup, >= 0.
          step_duration: The number of training steps that make one step of S, >= 1.
          minimum_learning_rate: The floor m applied after the warmup, >= 0.
          warmup_steps: The length W of the linear warmup, >= 0 (0: no warmup).
          warmup_learning_rate: The value :math:`w_0` at step 0 of the warmup, >= 0.
        """
        if not isinstance(schedule, _Schedule):
            raise TypeError(f"schedule must be a LearningRateSchedule, got {schedule!r}")
        self.schedule = schedule
        self.step_start = check_number("start_decay_steps", step_start, minimum=0, integer=True)
        self.step_duration = check_number(
            "decay_step_duration", step_duration, minimum=1, integer=True
        )
        self.minimum_learning_rate = check_number(
            "minimum_learning_rate", minimum_learning_rate, minimum=0
        )
        self.warmup_steps = check_number("warmup_steps", warmup_steps, minimum=0, integer=True)
        self.warmup_learning_rate = check_number(
            "warmup_learning_rate", warmup_learning_rate, minimum=0
        )

    def __call__(self, step: Any) -> tf.Tensor:
        step = tf.convert_to_tensor(step)
        if not step.dtype.is_integer:
            step = tf.cast(step, tf.int64)
        schedule_step = tf.maximum(step - (self.warmup_steps + self.step_start), 0)
        schedule_step //= self.step_duration
        learning_rate = tf.maximum(
            tf.cast(self.schedule(schedule_step), tf.float32), self.minimum_learning_rate
        )
        if self.warmup_steps == 0:
            return learning_rate
        first = tf.cast(self.schedule(tf.zeros_like(step)), tf.float32)
        start = tf.constant(self.warmup_learning_rate, tf.float32)
        fraction = tf.cast(step, tf.float32) / float(self.warmup_steps)
        warmup = start + (first - start) * fraction
        return tf.where(step < self.warmup_steps, warmup, learning_rate)

    def get_config(self) -> dict[str, Any]:
        return {
            "schedule": tf.keras.optimizers.schedules.serialize(self.schedule),
            "step_start": self.step_start,
            "step_duration": self.step_duration,
            "minimum_learning_rate": self.minimum_learning_rate,
            "warmup_steps": self.warmup_steps,
            "warmup_learning_rate": self.warmup_learning_rate,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ScheduleWrapper:
        config = dict(config)
        config["schedule"] = tf.keras.optimizers.schedules.deserialize(config["schedule"])
        return cls(**config)


SCHEDULES = {cls.__name__: cls for cls in (NoamDecay, Constant, WarmupStableDecay)}
"""The schedules this package adds to OpenNMT-tf's registry, by name."""


def evaluate(schedule: _Schedule, steps: np.ndarray) -> np.ndarray:
    """Evaluates ``schedule`` at every step of ``steps`` at once.

    Schedules written with element-wise operations take the whole vector in one call;
    those that branch on a scalar step (``tf.cond``, ``tf.case``) are vectorised with
    ``tf.vectorized_map``.

    Args:
      schedule: Any ``LearningRateSchedule``.
      steps: A 1-D array of training steps.

    Returns:
      A float64 array of learning rates, one per step.
    """
    steps = tf.constant(np.asarray(steps, dtype=np.int64))
    try:
        values = tf.convert_to_tensor(schedule(steps))
        if values.shape == steps.shape:
            return values.numpy().astype(np.float64)
    except (ValueError, TypeError, tf.errors.InvalidArgumentError):
        pass
    mapped = tf.function(lambda s: tf.vectorized_map(lambda x: tf.cast(schedule(x), tf.float32), s))
    return mapped(steps).numpy().astype(np.float64)
