r"""Decoupled weight decay that follows the learning rate, for the optimizers that take it.

At every update, before the optimizer's own step (Loshchilov & Hutter,
https://arxiv.org/abs/1711.05101, as in BERT and PyTorch's ``AdamW``):

.. math::

    w \leftarrow w - \text{lr}(s) \cdot \lambda \cdot w

where :math:`\text{lr}(s)` is the learning rate the optimizer uses for that update (the
schedule, warmup and floor included) and :math:`\lambda` is ``params.weight_decay``. Weights
whose name matches one of the ``params.weight_decay_exclude`` patterns are left out. The
optimizers that read a decay of their own or cannot be extended are refused by
:func:`onmt_trainkit.config.weight_decay`.

It is built on TensorFlow Addons' ``DecoupledWeightDecayExtension``, whose coefficient is here
a schedule, :class:`LearningRateScaledDecay`, evaluated at the optimizer's ``iterations``
like the learning rate itself. ``optimizer_params.weight_decay`` (OpenNMT-tf's key) is
different: TensorFlow Addons applies it as given, :math:`w \leftarrow w - \lambda w` at
every update whatever the learning rate.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from dataclasses import dataclass
from typing import Any
from collections.abc import Iterable, Mapping

import tensorflow as tf
from opennmt.optimizers.utils import get_optimizer_class
from tensorflow_addons.optimizers import DecoupledWeightDecayExtension
from tensorflow_addons.optimizers import extend_with_decoupled_weight_decay

_Schedule = tf.keras.optimizers.schedules.LearningRateSchedule

DEFAULT_EXCLUDE = ("bias", "layer_norm")
"""Patterns of the weights left out by default: biases and layer normalisation (``gamma``,
``beta``), as BERT leaves them out. They are searched in names such as
``transformer/self_attention_encoder/layer_norm/gamma:0`` or ``.../dense_4/bias:0``."""


@dataclass(frozen=True)
class WeightDecay:
    """Validated weight decay settings (see :func:`onmt_trainkit.config.weight_decay`).

    Attributes:
      coefficient: :math:`\\lambda` (``params.weight_decay``), > 0.
      exclude: Regular expressions searched in the variable names of the weights to leave out.
      exclude_given: Whether ``exclude`` comes from ``params.weight_decay_exclude`` (rather than
        :data:`DEFAULT_EXCLUDE`); then a pattern that matches no weight is reported.
    """

    coefficient: float
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    exclude_given: bool = False


@tf.keras.utils.register_keras_serializable(package="onmt_trainkit")
class LearningRateScaledDecay(_Schedule):
    r"""The decay coefficient :math:`c(s) = \lambda \cdot \text{lr}(s)`.

    Given to TensorFlow Addons as the weight decay, which subtracts :math:`c(s) \cdot w` from
    every decayed weight at the update made at step :math:`s` (the optimizer's ``iterations``
    before the update, the step at which the learning rate is evaluated too).
    """

    def __init__(self, weight_decay: float, learning_rate: float | _Schedule):
        r"""Initializes the schedule.

        Args:
          weight_decay: :math:`\lambda`, >= 0.
          learning_rate: The learning-rate schedule the optimizer uses, or a constant rate.
        """
        self.weight_decay = weight_decay
        self.learning_rate = learning_rate

    def __call__(self, step: Any) -> tf.Tensor:
        if isinstance(self.learning_rate, _Schedule):
            learning_rate = tf.cast(self.learning_rate(step), tf.float32)
        else:
            learning_rate = tf.constant(self.learning_rate, tf.float32)
        return tf.constant(self.weight_decay, tf.float32) * learning_rate

    def get_config(self) -> dict[str, Any]:
        learning_rate = self.learning_rate
        if isinstance(learning_rate, _Schedule):
            learning_rate = tf.keras.optimizers.schedules.serialize(learning_rate)
        return {"weight_decay": self.weight_decay, "learning_rate": learning_rate}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LearningRateScaledDecay:
        config = dict(config)
        if isinstance(config["learning_rate"], Mapping):
            config["learning_rate"] = tf.keras.optimizers.schedules.deserialize(
                config["learning_rate"]
            )
        return cls(**config)


def variable_name(variable: tf.Variable) -> str:
    """Returns the name of ``variable``, that of the replicated variable for the copy held by
    another replica of a ``MirroredStrategy`` (``.../bias/replica_1:0`` -> ``.../bias:0``)."""
    return re.sub(r"/replica_\d+(?=:\d+$)", "", variable.name)


def is_excluded(name: str, patterns: Iterable[str]) -> bool:
    """Whether a pattern is found in ``name`` (``re.search``, as TensorFlow Addons does)."""
    return any(re.search(pattern, name) for pattern in patterns)


class _ScaledDecayMixin:
    """Placed in front of an optimizer extended with TensorFlow Addons' decoupled weight decay.

    Which weights decay is decided by :func:`variable_name`, so also for the copies of a
    ``MirroredStrategy`` replica (TensorFlow Addons compares variable references, which do
    not match these copies, and decays no weight at all there when patterns are given). The
    first ``apply_gradients`` logs what decays and reports given patterns that match nothing.
    """

    exclude_given: bool = False
    _reported: bool = False

    def _do_use_weight_decay(self, var: tf.Variable) -> bool:
        return not is_excluded(variable_name(var), self.exclude_from_weight_decay or [])

    def apply_gradients(self, grads_and_vars: Iterable, *args: Any, **kwargs: Any) -> Any:
        grads_and_vars = list(grads_and_vars)
        if not self._reported:
            self._reported = True
            report([v for _, v in grads_and_vars], self.weight_decay.weight_decay,
                   self.exclude_from_weight_decay or [], self.exclude_given)
        return super().apply_gradients(grads_and_vars, *args, **kwargs)


def _log(level: int, message: str, *args: Any) -> None:
    """Logs ``message`` attributed to the caller's line (TensorFlow's logger names the first
    frame outside the calling module, TensorFlow's control flow when the optimizer is traced)."""
    logger = tf.get_logger()
    if logger.isEnabledFor(level):
        caller = sys._getframe(1)
        code = caller.f_code
        logger.handle(logger.makeRecord(
            logger.name, level, code.co_filename, caller.f_lineno, message, args, None, code.co_name
        ))


@tf.autograph.experimental.do_not_convert
def report(
    variables: list[tf.Variable], coefficient: float, patterns: list[str], patterns_given: bool
) -> None:
    """Logs how many weights decay and what each pattern leaves out; warns about a given
    pattern that matches no weight."""
    names = [variable_name(v) for v in variables]
    decayed = [n for n in names if not is_excluded(n, patterns)]
    matches = {p: sum(1 for n in names if re.search(p, n)) for p in patterns}
    left_out = ", ".join(f"{p!r}: {count}" for p, count in matches.items()) or "none"
    _log(
        logging.INFO,
        "Weight decay: w -= lr(s) * %g * w at every update for %d of %d weights; "
        "left out by params.weight_decay_exclude: %s",
        coefficient, len(decayed), len(names), left_out,
    )
    if patterns_given:
        for pattern, count in matches.items():
            if count == 0:
                example = names[0] if names else ""
                _log(
                    logging.WARNING,
                    f"params.weight_decay_exclude: the pattern {pattern!r} matches no weight of the model, "
                    f"so it leaves nothing out (weights are named like {example!r})",
                )


@functools.cache
def optimizer_class(base: type) -> type:
    """Returns ``base`` with the decay of this module (extended by TensorFlow Addons first,
    unless it already is, as ``AdamW`` and ``SGDW`` are)."""
    name = f"{base.__name__}WithScaledWeightDecay"
    if not issubclass(base, DecoupledWeightDecayExtension):
        base = extend_with_decoupled_weight_decay(base)
    return type(name, (_ScaledDecayMixin, base), {})


def make_optimizer(
    name: str, learning_rate: float | _Schedule, settings: WeightDecay, **optimizer_params: Any
) -> tf.keras.optimizers.legacy.Optimizer:
    """Builds the optimizer ``name`` as OpenNMT-tf does, with learning-rate-scaled decay.

    Args:
      name: An optimizer name OpenNMT-tf resolves, one of
        :data:`onmt_trainkit.config.SCALED_DECAY_OPTIMIZERS` (``Adam``, ``LazyAdam``, ``SGD``...).
      learning_rate: The learning-rate schedule, or a constant rate.
      settings: The decay coefficient and exclusion patterns.
      **optimizer_params: The optimizer's other arguments (``params.optimizer_params``, which
        must not set ``weight_decay``).

    Returns:
      A ``tf.keras.optimizers.legacy.Optimizer``.
    """
    cls = optimizer_class(get_optimizer_class(name))
    if not isinstance(learning_rate, _Schedule):
        learning_rate = float(learning_rate)
        rate = tf.constant(learning_rate, tf.float32)
    else:
        rate = learning_rate
    optimizer = cls(
        weight_decay=LearningRateScaledDecay(settings.coefficient, learning_rate),
        exclude_from_weight_decay=list(settings.exclude),
        learning_rate=rate,
        **optimizer_params,
    )
    optimizer.exclude_given = settings.exclude_given
    return optimizer


def effective_weight_decay(optimizer: Any, step: int) -> float | None:
    """Returns the coefficient c that the update at ``step`` applies (``w -= c * w``), or
    ``None`` for an optimizer without decoupled weight decay.

    Covers both this module's decay (:math:`\\lambda \\cdot \\text{lr}(s)`) and
    ``optimizer_params.weight_decay`` (constant). A ``LossScaleOptimizer`` is looked through.
    """
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    if not isinstance(optimizer, DecoupledWeightDecayExtension):
        return None
    value = optimizer.weight_decay
    if isinstance(value, _Schedule):
        value = value(step)
    return float(value)
