"""The one module that touches OpenNMT-tf's internals.

:func:`activate` replaces, in OpenNMT-tf 2.32:

- ``opennmt.models.Model.get_optimizer``: the learning rate comes from
  :func:`onmt_trainkit.config.learning_rate_schedule` (warmup, ``max_step`` lengths, checks);
- ``opennmt.Runner._init_model``: records ``train.max_step`` on the model for the above;
- the schedule registry entries ``NoamDecay`` (ours), ``WarmupStableDecay`` and ``Constant``;
- ``opennmt.training.Trainer``, ``MirroredStrategyTrainer`` and ``HorovodTrainer``: the moving
  average of :mod:`onmt_trainkit.moving_average`, updated inside the compiled training step,
  restored exactly on resume and swapped in around every save and evaluation;
- ``opennmt.utils.checkpoint.average_checkpoints``: :mod:`onmt_trainkit.averaging`.

:func:`deactivate` puts every original back.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager as ContextManager
from typing import Any

import opennmt
import tensorflow as tf
from opennmt import training
from opennmt.schedules import lr_schedules
from opennmt.utils import checkpoint as checkpoint_util

from onmt_trainkit import OPENNMT_VERSION, averaging, config, schedules
from onmt_trainkit.moving_average import MovingAverage

_MAX_STEP_ATTRIBUTE = "_onmt_trainkit_max_step"
_CHECKPOINT_KEY = "moving_average"

_originals: dict[tuple[Any, str], Any] = {}
_replaced_schedules: dict[str, Any] = {}


def check_version(version: str = opennmt.__version__) -> None:
    """Raises an error if OpenNMT-tf ``version`` is not the one the plugin was built for."""
    if not version.startswith(OPENNMT_VERSION):
        raise RuntimeError(
            f"onmt-trainkit supports OpenNMT-tf {OPENNMT_VERSION}x only, but OpenNMT-tf "
            f"{version} is installed: install opennmt-tf==2.32.0 or stop importing onmt_trainkit"
        )


def is_active() -> bool:
    """Returns ``True`` while the plugin is active."""
    return bool(_originals)


def activate() -> None:
    """Activates the plugin; activating an active plugin does nothing."""
    check_version()
    if is_active():
        return
    _replace(opennmt.models.Model, "get_optimizer", _get_optimizer)
    _replace(opennmt.Runner, "_init_model", _init_model)
    for name in ("Trainer", "MirroredStrategyTrainer", "HorovodTrainer"):
        _replace(training, name, _TRAINERS[name])
    _replace(checkpoint_util, "average_checkpoints", _average_checkpoints)
    registry = lr_schedules._LR_SCHEDULES_REGISTRY._registry
    for name, cls in schedules.SCHEDULES.items():
        _replaced_schedules[name] = registry.get(name)
        registry[name] = cls


def deactivate() -> None:
    """Restores stock OpenNMT-tf."""
    for (owner, name), original in _originals.items():
        setattr(owner, name, original)
    _originals.clear()
    registry = lr_schedules._LR_SCHEDULES_REGISTRY._registry
    for name, original in _replaced_schedules.items():
        if original is None:
            registry.pop(name, None)
        else:
            registry[name] = original
    _replaced_schedules.clear()


def _replace(owner: Any, name: str, value: Any) -> None:
    _originals[(owner, name)] = getattr(owner, name)
    setattr(owner, name, value)


def _original(owner: Any, name: str) -> Any:
    return _originals[(owner, name)]


def _init_model(runner: opennmt.Runner, run_config: dict) -> opennmt.models.Model:
    model = _original(opennmt.Runner, "_init_model")(runner, run_config)
    setattr(model, _MAX_STEP_ATTRIBUTE, (run_config.get("train") or {}).get("max_step"))
    return model


def _get_optimizer(model: opennmt.models.Model) -> tf.keras.optimizers.legacy.Optimizer | None:
    params = model.params
    optimizer_name = params.get("optimizer")
    if optimizer_name is None:
        return None
    max_step = getattr(model, _MAX_STEP_ATTRIBUTE, None)
    learning_rate = config.learning_rate_schedule(params, max_step=max_step)
    if learning_rate is None:
        learning_rate = tf.constant(params["learning_rate"], dtype=tf.float32)
    optimizer_params = params.get("optimizer_params") or {}
    return opennmt.optimizers.make_optimizer(optimizer_name, learning_rate, **optimizer_params)


def _average_checkpoints(
    model_dir: str | list[str],
    output_dir: str,
    trackables: dict,
    max_count: int = 8,
    model_key: str = "model",
) -> str:
    """Replaces ``opennmt.utils.checkpoint.average_checkpoints`` (same signature).

    As stock OpenNMT-tf, the average is added to ``output_dir`` if it exists; unlike it, a file
    there that is not an average's is never replaced (see :mod:`onmt_trainkit.output`), and
    checkpoints with nothing under ``model_key`` are refused. Remote paths go through
    ``tf.io.gfile``.

    Raises:
      ValueError: if ``model_key`` is not in ``trackables``, or for a request that the averager
        refuses (:class:`onmt_trainkit.averaging.AveragingError` and its kin).
    """
    if model_key not in trackables:
        raise ValueError(f"{model_key} not found in trackables {trackables}")
    if isinstance(model_dir, (list, tuple)):
        newest = sorted(model_dir, key=averaging.checkpoint_step)[-max_count:]
        selection = averaging.Selection(checkpoints=newest)
        source_dir = None
    else:
        selection = averaging.Selection(max_count=max_count)
        source_dir = model_dir
    logger = tf.get_logger()
    result = averaging.average_checkpoints(
        source_dir, output_dir, selection, overwrite=True, model_key=model_key, log=logger.warning
    )
    logger.info("Saved averaged checkpoint to %s", result.checkpoint_prefix)
    return output_dir


class _MovingAverageTrainer:
    """Mixin placed in front of OpenNMT-tf's trainers: the plugin's moving average."""

    _moving_average: MovingAverage | None = None
    _report_steps: int = 100

    def __call__(
        self,
        dataset: Any,
        max_step: int | None = None,
        accum_steps: int = 1,
        report_steps: int = 100,
        save_steps: int = 5000,
        evaluator: Any = None,
        eval_steps: int = 5000,
        moving_average_decay: float | None = None,
    ) -> dict:
        self._report_steps = report_steps or 100
        if moving_average_decay is not None:
            decay = config.moving_average_decay(moving_average_decay)
            if self.is_master:
                self._start_moving_average(decay)
        return super().__call__(
            dataset,
            max_step=max_step,
            accum_steps=accum_steps,
            report_steps=report_steps,
            save_steps=save_steps,
            evaluator=evaluator,
            eval_steps=eval_steps,
            moving_average_decay=None,
        )

    def _variable_scope(self) -> ContextManager:
        return contextlib.nullcontext()

    def _start_moving_average(self, decay: float) -> None:
        with self._variable_scope():
            self._model.create_variables(optimizer=self._optimizer)
            moving_average = MovingAverage(
                self._model.trainable_variables, self._optimizer.iterations, decay=decay
            )
        logger = tf.get_logger()
        if self._checkpoint is not None:
            # Attaching the state to the restored checkpoint restores it (deferred restoration).
            setattr(self._checkpoint._checkpoint, _CHECKPOINT_KEY, moving_average.state)
            latest = self._checkpoint._checkpoint_manager.latest_checkpoint
            if moving_average.num_updates > 0:
                moving_average.exchange()
                logger.info(
                    "Moving average: restored the training weights and the average "
                    "(%d updates) from %s",
                    moving_average.num_updates,
                    latest,
                )
            elif latest is not None:
                logger.info(
                    "Moving average: %s has no moving average state; the average starts "
                    "from the current weights",
                    latest,
                )
        self._moving_average = moving_average

    def _apply_gradients(self, sample_size: tf.Tensor) -> None:
        super()._apply_gradients(sample_size)
        if self._moving_average is not None:
            decay = self._moving_average.update()
            step = self._optimizer.iterations
            with tf.summary.record_if(step % self._report_steps == 0):
                tf.summary.scalar(
                    "optim/moving_average_decay",
                    decay,
                    step=step,
                    description="Effective decay of the moving average of the weights",
                )

    def _swapped(self) -> ContextManager:
        if self._moving_average is None:
            return contextlib.nullcontext()
        return self._moving_average.shadow_variables()

    def _save_checkpoint(self, step: int, moving_average: Any = None) -> None:
        with self._swapped():
            super()._save_checkpoint(step)

    def _evaluate(self, evaluator: Any, step: int, moving_average: Any = None) -> bool:
        if evaluator is None:
            return super()._evaluate(evaluator, step)
        with self._swapped():
            return super()._evaluate(evaluator, step)


class Trainer(_MovingAverageTrainer, training.Trainer):
    """``opennmt.training.Trainer`` with the plugin's moving average."""


class MirroredStrategyTrainer(_MovingAverageTrainer, training.MirroredStrategyTrainer):
    """``opennmt.training.MirroredStrategyTrainer`` with the plugin's moving average."""

    def _variable_scope(self) -> ContextManager:
        return self._strategy.scope()


class HorovodTrainer(_MovingAverageTrainer, training.HorovodTrainer):
    """``opennmt.training.HorovodTrainer`` with the plugin's moving average on rank 0."""


_TRAINERS: dict[str, type] = {
    "Trainer": Trainer,
    "MirroredStrategyTrainer": MirroredStrategyTrainer,
    "HorovodTrainer": HorovodTrainer,
}
