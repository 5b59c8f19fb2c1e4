"""The one module that touches OpenNMT-tf's internals.

:func:`activate` replaces, in OpenNMT-tf 2.32:

- ``opennmt.models.Model.get_optimizer``: the learning rate comes from
  :func:`onmt_trainkit.config.learning_rate_schedule` (warmup, ``max_step`` lengths, checks);
  ``params.weight_decay`` adds the decay of :mod:`onmt_trainkit.weight_decay`;
- ``opennmt.training.TrainingStats.log``: also writes the weight decay coefficient of the next
  update as ``optim/weight_decay``, beside ``optim/learning_rate``;
- ``opennmt.Runner._init_model``: records ``train.max_step`` on the model for the above, and
  the ``train`` section for the moving average's keys;
- ``opennmt.utils.checkpoint.Checkpoint.restore``: records which checkpoint was restored;
- ``opennmt.Runner._finalize_config``: warns of each key that nothing reads (:mod:`onmt_trainkit.keys`);
  for training, opens the log with what the plugin does in the run (:mod:`onmt_trainkit.summary`),
  checking the schedule before anything is built;
- ``opennmt.runner._auto_tune_batch_size``: the batch-size trials get the run's schedule lengths
  (a length ``max_step`` resolved against the real ``train.max_step``, not the trials' 5 steps);
- the schedule registry entries ``NoamDecay`` (ours), ``WarmupStableDecay`` and ``Constant``;
- ``opennmt.training.Trainer``, ``MirroredStrategyTrainer`` and ``HorovodTrainer``: the moving
  averages of :mod:`onmt_trainkit.moving_average`, updated inside the compiled training step,
  restored exactly on resume (by name) and swapped in around every save and evaluation; a
  resumed run takes the training weights from a checkpoint that holds them, whether the
  moving average is still on or not;
- ``opennmt.utils.checkpoint.average_checkpoints``: :mod:`onmt_trainkit.averaging`;
- ``opennmt.bin.main.main`` (what ``onmt-main`` runs), once that module is imported: a value
  the plugin refuses ends the command with exit status 2 and, as the last line of its standard
  error, ``onmt-main: error: <message>``, not a traceback.

:func:`deactivate` puts every original back.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager as ContextManager
from typing import Any

import opennmt
import tensorflow as tf
from opennmt import runner as runner_module
from opennmt import training
from opennmt.schedules import lr_schedules
from opennmt.utils import checkpoint as checkpoint_util

from onmt_trainkit import _spec_executing_with, averaging, config, output, schedules, summary
from onmt_trainkit import keys, weight_decay
from onmt_trainkit import moving_average
from onmt_trainkit import moving_average_layout as layout
from onmt_trainkit.errors import ConfigError, one_line
from onmt_trainkit.moving_average import MovingAverage, StateMismatchError

_MAIN_MODULE = "opennmt.bin.main"
_REFUSALS = (ConfigError, StateMismatchError, averaging.AveragingError, output.OutputError, layout.LayoutError)
"""What the plugin refuses with a message for the user: a configuration value, a checkpoint
that cannot be resumed, an averaging request (``onmt-main average_checkpoints``)."""

_MAX_STEP_ATTRIBUTE = "_onmt_trainkit_max_step"
_TRAIN_ATTRIBUTE = "_onmt_trainkit_train"
_RESTORED_ATTRIBUTE = "_onmt_trainkit_restored"
_CHECKED_KEYS_ATTRIBUTE = "_onmt_trainkit_checked_keys"
_TRAINING_ATTRIBUTE = "_onmt_trainkit_training"
_LENGTH_OUTSIDE_TRAINING = 2**31 - 1
"""``train.max_step`` for the schedule of a command other than training, when none is set."""
_CHECKPOINT_KEY = layout.ROOT

_originals: dict[tuple[Any, str], Any] = {}
_schedule_from_auto_config = contextvars.ContextVar("schedule_from_auto_config", default=False)
_replaced_schedules: dict[str, Any] = {}


def is_active() -> bool:
    """Returns ``True`` while the plugin is active."""
    return bool(_originals)


def activate() -> None:
    """Activates the plugin; activating an active plugin does nothing. The OpenNMT-tf version
    is checked by :func:`onmt_trainkit.activate`, before this module is imported."""
    if is_active():
        return
    _replace(opennmt.models.Model, "get_optimizer", _get_optimizer)
    _replace(opennmt.Runner, "_init_model", _init_model)
    _replace(opennmt.Runner, "_finalize_config", _finalize_config)
    _replace(runner_module, "_auto_tune_batch_size", _auto_tune_batch_size)
    for name in ("Trainer", "MirroredStrategyTrainer", "HorovodTrainer"):
        _replace(training, name, _TRAINERS[name])
    _replace(checkpoint_util, "average_checkpoints", _average_checkpoints)
    _replace(checkpoint_util.Checkpoint, "restore", _restore_checkpoint)
    _replace(training.TrainingStats, "log", _log_training_stats)
    if _MAIN_MODULE in sys.modules:
        _wrap_main(sys.modules[_MAIN_MODULE])
    elif not any(isinstance(finder, _WrapMainOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _WrapMainOnImport())
    registry = lr_schedules._LR_SCHEDULES_REGISTRY._registry
    for name, cls in schedules.SCHEDULES.items():
        _replaced_schedules[name] = registry.get(name)
        registry[name] = cls


def deactivate() -> None:
    """Restores stock OpenNMT-tf."""
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _WrapMainOnImport)]
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


def _wrap_main(module: types.ModuleType) -> None:
    """Replaces ``main`` of ``opennmt.bin.main`` by :func:`_refusing_in_one_line` of it, once."""
    if (module, "main") not in _originals:
        _replace(module, "main", _refusing_in_one_line(module.main))


class _WrapMainOnImport(importlib.abc.MetaPathFinder):
    """Wraps ``main`` right after ``opennmt.bin.main`` is imported: the ``onmt-main`` console
    script imports it after ``opennmt``, whose import activated the plugin. Importing it at
    activation instead would make ``python -m opennmt.bin.main`` (OpenNMT-tf's batch-size
    trials) warn that the module it runs was imported first; run that way, it is not wrapped."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != _MAIN_MODULE:
            return None

        def wrap(execute: Callable[[types.ModuleType], None]) -> Callable[[types.ModuleType], None]:
            def exec_module(module: types.ModuleType) -> None:
                execute(module)
                if is_active():
                    _wrap_main(module)

            return exec_module

        return _spec_executing_with(self, name, path, target, wrap)


def _refusing_in_one_line(main: Callable[[], Any]) -> Callable[[], Any]:
    """Wraps ``onmt-main``'s ``main``: what the plugin refuses (:data:`_REFUSALS`) exits with
    status 2 and one line on stderr, as argparse reports a bad option (the traceback is logged
    at the DEBUG level: ``--log_level DEBUG``); any other error keeps its traceback."""

    @functools.wraps(main)
    def refusing_main() -> Any:
        try:
            return main()
        except _REFUSALS as error:
            tf.get_logger().debug("onmt-trainkit refused the command", exc_info=True)
            sys.stderr.write(f"onmt-main: error: {one_line(error)}\n")
            sys.exit(2)

    return refusing_main


def _init_model(runner: opennmt.Runner, run_config: dict) -> opennmt.models.Model:
    model = _original(opennmt.Runner, "_init_model")(runner, run_config)
    max_step = (run_config.get("train") or {}).get("max_step")
    if max_step is None and not getattr(runner, _TRAINING_ATTRIBUTE, False):
        # Outside training (average_checkpoints and update_vocab build the optimizer) the
        # schedule only gives the checkpoint its structure: a length written max_step needs no
        # train.max_step there.
        max_step = _LENGTH_OUTSIDE_TRAINING
    setattr(model, _MAX_STEP_ATTRIBUTE, max_step)
    setattr(model, _TRAIN_ATTRIBUTE, dict(run_config.get("train") or {}))
    return model


def _restore_checkpoint(
    checkpoint: checkpoint_util.Checkpoint, checkpoint_path: str | None = None, weights_only: bool = False
) -> str | None:
    """Replaces ``opennmt.utils.checkpoint.Checkpoint.restore``: records on ``checkpoint``
    which checkpoint was restored, and how, for the trainer (which restores the training
    weights saved beside the average)."""
    path = _original(checkpoint_util.Checkpoint, "restore")(
        checkpoint, checkpoint_path=checkpoint_path, weights_only=weights_only
    )
    setattr(checkpoint, _RESTORED_ATTRIBUTE, (path, weights_only))
    return path


def _from_auto_config(runner: opennmt.Runner) -> bool:
    """Whether ``decay_type`` comes from ``--auto_config`` rather than the user's YAML."""
    return bool(runner._auto_config) and "decay_type" not in (runner._config.get("params") or {})


def _is_first_process() -> bool:
    """False in a Horovod process of rank > 0 (the others log what rank 0 logs)."""
    horovod = sys.modules.get("horovod.tensorflow")
    return horovod is None or not horovod.is_initialized() or horovod.rank() == 0


def _warn_unknown_keys(runner: opennmt.Runner) -> None:
    """Warns, once per runner, of each key of the user's configuration that neither OpenNMT-tf
    nor the plugin reads (OpenNMT-tf ignores them silently)."""
    if getattr(runner, _CHECKED_KEYS_ATTRIBUTE, False) or not _is_first_process():
        return
    setattr(runner, _CHECKED_KEYS_ATTRIBUTE, True)
    for unknown in keys.unknown_keys(runner._config):
        tf.get_logger().warning("onmt-trainkit: %s", unknown.message())


def _finalize_config(
    runner: opennmt.Runner, training: bool = False, num_replicas: int = 1, num_devices: int = 1
) -> dict:
    """Warns of unknown keys (:func:`_warn_unknown_keys`); for training, logs what the plugin
    does around OpenNMT-tf's parameters (first the banner, then the features once the
    configuration is final), checking the schedule."""
    original = _original(opennmt.Runner, "_finalize_config")
    setattr(runner, _TRAINING_ATTRIBUTE, training)
    if not training:
        _warn_unknown_keys(runner)
        return original(runner, training=training, num_replicas=num_replicas, num_devices=num_devices)
    logger = tf.get_logger()
    logger.info(summary.banner())
    _warn_unknown_keys(runner)
    auto_config = _from_auto_config(runner)
    token = _schedule_from_auto_config.set(auto_config)
    try:
        run_config = original(runner, training=True, num_replicas=num_replicas, num_devices=num_devices)
    finally:
        _schedule_from_auto_config.reset(token)
    for line in summary.describe(run_config, auto_config=auto_config):
        logger.info("onmt-trainkit: %s", line)
    return run_config


def _auto_tune_batch_size(run_config: dict, *args: Any, **kwargs: Any) -> int:
    """Replaces ``opennmt.runner._auto_tune_batch_size``: the trials, which train 5 steps in
    subprocesses with ``train.max_step: 5``, get schedule lengths resolved against the run."""
    trial_config = dict(run_config)
    trial_config["params"] = config.resolve_max_step(
        run_config["params"],
        (run_config.get("train") or {}).get("max_step"),
        auto_config=_schedule_from_auto_config.get(),
    )
    return _original(runner_module, "_auto_tune_batch_size")(trial_config, *args, **kwargs)


def _get_optimizer(model: opennmt.models.Model) -> tf.keras.optimizers.legacy.Optimizer | None:
    params = model.params
    optimizer_name = params.get("optimizer")
    if optimizer_name is None:
        return None
    max_step = getattr(model, _MAX_STEP_ATTRIBUTE, None)
    learning_rate = config.learning_rate_schedule(params, max_step=max_step)
    optimizer_params = params.get("optimizer_params") or {}
    decay = config.weight_decay(params)
    if decay is not None:
        rate = params["learning_rate"] if learning_rate is None else learning_rate
        return weight_decay.make_optimizer(optimizer_name, rate, decay, **optimizer_params)
    warning = config.absolute_weight_decay_warning(params)
    if warning is not None:
        tf.get_logger().warning(warning)
    if learning_rate is None:
        learning_rate = tf.constant(params["learning_rate"], dtype=tf.float32)
    return opennmt.optimizers.make_optimizer(optimizer_name, learning_rate, **optimizer_params)


def _log_training_stats(stats: training.TrainingStats, is_master: bool = True) -> None:
    """Replaces ``TrainingStats.log``: adds ``optim/weight_decay``, the coefficient c of
    ``w -= c * w`` at the next update, logged at the step of ``optim/learning_rate``."""
    _original(training.TrainingStats, "log")(stats, is_master)
    coefficient = weight_decay.effective_weight_decay(stats._optimizer, stats._last_step)
    if is_master and coefficient is not None:
        tf.summary.scalar(
            "optim/weight_decay",
            coefficient,
            description="Weight decay coefficient c of the next update: w -= c * w",
        )


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
    """Mixin placed in front of OpenNMT-tf's trainers: the plugin's moving averages, and the
    training weights restored from any checkpoint that holds them beside its average."""

    _moving_average: MovingAverage | None = None
    _report_steps: int = 100
    _eval_all: bool = False

    def __call__(
        self,
        dataset: Any,
        max_step: int | None = None,
        accum_steps: int = 1,
        report_steps: int = 100,
        save_steps: int = 5000,
        evaluator: Any = None,
        eval_steps: int = 5000,
        moving_average_decay: float | list[float] | None = None,
    ) -> dict:
        self._report_steps = report_steps or 100
        train = dict(getattr(self._model, _TRAIN_ATTRIBUTE, None) or {})
        train["moving_average_decay"] = moving_average_decay
        settings = config.moving_average_settings(train)
        if settings is None and self.is_master:
            unused = [key for key in config.MOVING_AVERAGE_KEYS if train.get(key) is not None]
            if unused:
                tf.get_logger().warning(
                    f"Moving average: train.{unused[0]} has no effect without train.moving_average_decay"
                )
        if self.is_master:
            self._start_moving_average(settings, evaluator)
        self._synchronize_replicas()
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

    def _synchronize_replicas(self) -> None:
        """Gives every process the master's variables before the first step (one process: nothing)."""

    def _start_moving_average(self, settings: config.MovingAverageSettings | None, evaluator: Any) -> None:
        """Restores the training weights if the restored checkpoint holds them (whether the
        moving average is on or not), then starts the moving averages and restores them."""
        logger = tf.get_logger()
        path, weights_only = getattr(self._checkpoint, _RESTORED_ATTRIBUTE, (None, False))
        checkpoint = moving_average.CheckpointTensors(path) if path is not None else None
        with_training_weights = checkpoint is not None and moving_average.holds_training_weights(checkpoint.names)
        if settings is None and not with_training_weights:
            return
        with self._variable_scope():
            self._model.create_variables(optimizer=self._optimizer)
            names = moving_average.variable_names(self._model)
            if with_training_weights:
                count = moving_average.restore_training_weights(
                    checkpoint,
                    {names[v.ref()]: v for v in self._model.variables if v.ref() in names},
                    self._model.trainable_variables,
                )
        if settings is None:
            decay = layout.model_decay(checkpoint.names)
            logger.info(
                "Moving average: off; took the training weights of %d variables from %s, not its "
                "model weights (the moving average%s)",
                count, path, "" if decay is None else f" of decay {layout.decay_name(decay)}",
            )
            return
        trainable = self._model.trainable_variables
        with self._variable_scope():
            average = MovingAverage(
                trainable,
                self._optimizer.iterations,
                decay=settings.decays,
                start_step=settings.start_step,
                every=settings.every,
                names=[names[v.ref()] for v in trainable],
            )
            if checkpoint is not None and not weights_only:
                for line in average.restore(checkpoint).lines():
                    logger.info("Moving average: %s", line)
            elif checkpoint is not None:
                logger.info(
                    "Moving average: took the %s weights from %s (--checkpoint_path without "
                    "--continue_from_checkpoint: a new run); the averages start from them",
                    "training" if with_training_weights else "model", path,
                )
        if self._checkpoint is not None:
            setattr(self._checkpoint._checkpoint, _CHECKPOINT_KEY, average.state)
        self._moving_average = average
        self._eval_all = settings.eval_all
        if settings.eval_all and evaluator is None:
            logger.warning("Moving average: train.moving_average_eval_all needs --with_eval; nothing to evaluate")

    def _apply_gradients(self, sample_size: tf.Tensor) -> None:
        super()._apply_gradients(sample_size)
        if self._moving_average is not None:
            decay = self._moving_average.update()
            step = self._optimizer.iterations
            report = tf.logical_and(step % self._report_steps == 0, self._moving_average.updates_at(step))
            with tf.summary.record_if(report):
                tf.summary.scalar(
                    "optim/moving_average_decay",
                    decay,
                    step=step,
                    description="Decay applied by the update of the (first) moving average of the weights",
                )

    def _save_checkpoint(self, step: int, moving_average: Any = None) -> None:
        if self._moving_average is None or self._checkpoint is None or step == self._checkpoint.last_saved_step:
            return super()._save_checkpoint(step)
        with self._moving_average.shadow_variables():
            super()._save_checkpoint(step)

    def _evaluate(self, evaluator: Any, step: int, moving_average: Any = None) -> bool:
        if evaluator is None or self._moving_average is None:
            return super()._evaluate(evaluator, step)
        evaluates = self.is_master and step != evaluator.last_evaluated_step
        with self._moving_average.shadow_variables():
            should_stop = super()._evaluate(evaluator, step)
        if evaluates and self._eval_all:
            self._evaluate_each_average(evaluator, step)
        return should_stop

    def _evaluate_each_average(self, evaluator: Any, step: int) -> None:
        """Writes the dev loss and perplexity of the training weights and of each average as
        ``eval/raw/<metric>`` and ``eval/ema_<decay>/<metric>`` in the evaluation's event files;
        the first decay's are those of the evaluation that just ran."""
        average = self._moving_average
        _, first = evaluator.metrics_history[-1]
        results = {"raw": _dev_loss(evaluator)}
        results[f"ema_{layout.decay_name(average.decay)}"] = {k: first[k] for k in ("loss", "perplexity")}
        for decay in average.decays[1:]:
            with average.shadow_variables(decay):
                results[f"ema_{layout.decay_name(decay)}"] = _dev_loss(evaluator)
        writer = evaluator._summary_writer
        with writer.as_default():
            for label, metrics in results.items():
                for metric, value in metrics.items():
                    tf.summary.scalar(f"eval/{label}/{metric}", value, step=step)
        writer.flush()
        tf.get_logger().info(
            "Moving average: evaluation for step %d: %s",
            step, " ; ".join(f"{label} loss = {metrics['loss']:f}" for label, metrics in results.items()),
        )


def _dev_loss(evaluator: Any) -> dict[str, Any]:
    """The dev loss and perplexity of the model's current weights, computed as
    ``opennmt.evaluation.Evaluator`` does, without scorers, recording or export."""
    loss_num = loss_den = 0
    for batch in evaluator._dataset:
        features, labels = evaluator._model.split_features_labels(batch)
        loss, _ = evaluator._eval_fn(features, labels)
        if isinstance(loss, tuple):
            loss_num += loss[0]
            loss_den += loss[1]
        else:
            loss_num += loss
            loss_den += 1
    loss = loss_num / loss_den
    return {"loss": loss.numpy(), "perplexity": tf.math.exp(loss).numpy()}


class Trainer(_MovingAverageTrainer, training.Trainer):
    """``opennmt.training.Trainer`` with the plugin's moving average."""


class MirroredStrategyTrainer(_MovingAverageTrainer, training.MirroredStrategyTrainer):
    """``opennmt.training.MirroredStrategyTrainer`` with the plugin's moving average."""

    def _variable_scope(self) -> ContextManager:
        return self._strategy.scope()


class HorovodTrainer(_MovingAverageTrainer, training.HorovodTrainer):
    """``opennmt.training.HorovodTrainer`` with the plugin's moving average on rank 0."""

    def __call__(self, dataset: Any, **kwargs: Any) -> dict:
        # Rank 0 creates every variable (optimizer slots too) before the first step, to restore
        # the training weights and start the moving average: every rank creates them then too.
        self._model.create_variables(optimizer=self._optimizer)
        return super().__call__(dataset, **kwargs)

    def _synchronize_replicas(self) -> None:
        # OpenNMT-tf broadcasts only after the first step, whose gradients would then come from
        # each rank's own initial weights: after a resume, not the restored ones.
        self._broadcast_variables()

    def _broadcast_variables(self) -> None:
        """Broadcasts rank 0's model variables, step and optimizer slots, in an order and under
        names that do not depend on how each rank created them (restoring a checkpoint creates
        the slots under other names and in another order than a first step does)."""
        optimizer = self._optimizer
        slots = [
            optimizer.get_slot(variable, name)
            for variable in self._model.trainable_variables
            for name in optimizer.get_slot_names()
        ]
        for index, variable in enumerate([*self._model.variables, optimizer.iterations, *slots]):
            value = self._hvd.broadcast(variable, root_rank=0, name=f"onmt_trainkit_broadcast_{index}")
            variable.assign(value, read_value=False)


_TRAINERS: dict[str, type] = {
    "Trainer": Trainer,
    "MirroredStrategyTrainer": MirroredStrategyTrainer,
    "HorovodTrainer": HorovodTrainer,
}
