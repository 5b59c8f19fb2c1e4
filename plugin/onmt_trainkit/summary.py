"""What the plugin does in a training run, in a few lines for the top of the training log.

The lines name the learning rate (warmup, schedule with its resolved arguments, delay, floor),
the moving average of the weights and the weight decay, each on or off, read from the final
configuration of the run (the user's YAML merged over ``--auto_config``).
"""

from __future__ import annotations

import inspect
from typing import Any
from collections.abc import Mapping

from onmt_trainkit import __version__, config


def banner() -> str:
    """Returns the line that opens a training log: the plugin, its version and the way out."""
    return (
        f"onmt-trainkit {__version__} is active: OpenNMT-tf runs with its learning-rate schedules, "
        "moving average, weight decay and checkpoint averaging (ONMT_TRAINKIT=0 for stock "
        "OpenNMT-tf)"
    )


def describe(run_config: Mapping[str, Any], auto_config: bool = False) -> list[str]:
    """Returns one line per feature of the plugin for the run that ``run_config`` describes.

    Args:
      run_config: The final configuration of a training run (not modified).
      auto_config: ``decay_type`` comes from ``--auto_config`` (see
        :func:`onmt_trainkit.config.learning_rate_schedule`).

    Raises:
      ConfigError: if the schedule's keys cannot be used (the message training would give).
    """
    params = run_config.get("params") or {}
    train = run_config.get("train") or {}
    resolved = config.resolve_max_step(params, train.get("max_step"), auto_config=auto_config)
    return [
        f"learning rate: {_learning_rate(resolved)}",
        f"moving average of the weights: {_moving_average(train)}",
        f"weight decay: {_weight_decay(params)}",
    ]


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _learning_rate(params: Mapping[str, Any]) -> str:
    warmup = params.get("warmup_steps") or 0
    decay_type = params.get("decay_type")
    learning_rate = params.get("learning_rate")
    if decay_type is None:
        text = f"constant {_number(learning_rate)}" + ("" if warmup else " (no decay_type)")
    else:
        arguments = dict(params.get("decay_params") or {})
        first = list(inspect.signature(config.schedule_class(decay_type).__init__).parameters)[1]
        if first not in arguments and learning_rate is not None:
            arguments = {first: learning_rate, **arguments}
        listed = ", ".join(f"{key}={_number(value)}" for key, value in arguments.items())
        text = f"{decay_type}({listed})"
    if warmup:
        start = _number(params.get("warmup_learning_rate") or 0)
        text = f"linear warmup over {warmup} steps from {start}, then {text}"
    extras = [
        f"{key} {_number(params[key])}"
        for key, default in (("start_decay_steps", 0), ("decay_step_duration", 1), ("minimum_learning_rate", 0))
        if params.get(key, default) != default
    ]
    return ", ".join([text, *extras])


def _moving_average(train: Mapping[str, Any]) -> str:
    settings = config.moving_average_settings(train)
    if settings is None:
        return "off"
    decays = ", ".join(_number(decay) for decay in settings.decays)
    text = f"on, decay{'s' if len(settings.decays) > 1 else ''} {decays} (d at step t: min(d, (1 + t) / (10 + t)))"
    if settings.start_step:
        text += f", from step {settings.start_step}"
    if settings.every > 1:
        text += f", every {settings.every} steps"
    return (
        f"{text}; checkpoints hold the average of decay {_number(settings.decays[0])}, with the "
        "training weights saved beside it"
    )


def _weight_decay(params: Mapping[str, Any]) -> str:
    settings = config.weight_decay(params)
    if settings is not None:
        excluded = ", ".join(settings.exclude) if settings.exclude else "none"
        coefficient = _number(settings.coefficient)
        return f"w -= lr(s) * {coefficient} * w (params.weight_decay), weights left out: {excluded}"
    absolute = (params.get("optimizer_params") or {}).get("weight_decay")
    if absolute:
        return (
            f"w -= {_number(absolute)} * w at every step, not scaled by the learning rate "
            "(optimizer_params.weight_decay, TensorFlow Addons)"
        )
    return "off"
