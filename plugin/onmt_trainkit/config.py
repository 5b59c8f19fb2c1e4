"""Validation of the YAML keys the plugin reads, and the schedule they describe.

The keys, their bounds and what they mean are listed once, in :data:`onmt_trainkit.keys.PLUGIN_KEYS`
(the source of ``docs/configuration.md``).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any
from collections.abc import Callable, Mapping

import opennmt
import tensorflow as tf
from opennmt.optimizers.utils import get_optimizer_class
from tensorflow_addons.optimizers import DecoupledWeightDecayExtension

from onmt_trainkit import keys, schedules
from onmt_trainkit.errors import ConfigError, check_number, invalid, unknown_name
from onmt_trainkit.moving_average import check_decays
from onmt_trainkit.weight_decay import DEFAULT_EXCLUDE, WeightDecay

MAX_STEP = "max_step"
"""The value that a schedule length may take to mean "until the end of training"."""

LENGTH_KEYS = ("decay_steps", "first_decay_steps", "total_steps", "max_step")
"""The ``decay_params`` keys that may be written as ``max_step``."""

_positive = dict(minimum=0, min_inclusive=False)
_positive_int = dict(minimum=0, min_inclusive=False, integer=True)
_non_negative = dict(minimum=0)
_fraction = dict(minimum=0, maximum=1)

# Bounds on the arguments of the Keras schedules, which do not check them.
_KERAS_BOUNDS: dict[str, dict[str, dict[str, Any]]] = {
    "PolynomialDecay": {
        "initial_learning_rate": _non_negative,
        "decay_steps": _positive_int,
        "end_learning_rate": _non_negative,
        "power": _positive,
    },
    "CosineDecay": {
        "initial_learning_rate": _non_negative,
        "decay_steps": _positive_int,
        "alpha": _fraction,
        "warmup_target": _non_negative,
        "warmup_steps": dict(minimum=0, integer=True),
    },
    "CosineDecayRestarts": {
        "initial_learning_rate": _non_negative,
        "first_decay_steps": _positive_int,
        "t_mul": _positive,
        "m_mul": _positive,
        "alpha": _fraction,
    },
    "ExponentialDecay": {
        "initial_learning_rate": _non_negative,
        "decay_steps": _positive_int,
        "decay_rate": _positive,
    },
    "InverseTimeDecay": {
        "initial_learning_rate": _non_negative,
        "decay_steps": _positive_int,
        "decay_rate": _non_negative,
    },
}


def _as_dict(key: str, value: Any) -> dict[str, Any]:
    """Returns a plain copy of a mapping (Keras wraps a model's ``params`` in its own type)."""
    if isinstance(value, Mapping) or (hasattr(value, "keys") and hasattr(value, "__getitem__")):
        return {k: value[k] for k in value.keys()}
    raise invalid(key, value, "a mapping of names to values")


def _keras_schedules() -> dict[str, type]:
    module = tf.keras.optimizers.schedules
    return {
        name: value
        for name, value in vars(module).items()
        if inspect.isclass(value)
        and issubclass(value, schedules._Schedule)
        and value is not schedules._Schedule
    }


def _opennmt_schedules() -> dict[str, type]:
    return {
        name: value
        for name, value in vars(opennmt.schedules).items()
        if inspect.isclass(value)
        and issubclass(value, schedules._Schedule)
        and value is not opennmt.schedules.ScheduleWrapper
    }


def schedule_names() -> list[str]:
    """Returns every name ``decay_type`` accepts (besides user-registered ones)."""
    return sorted({**_keras_schedules(), **_opennmt_schedules(), **schedules.SCHEDULES})


def schedule_class(name: Any) -> type:
    """Resolves ``decay_type`` as OpenNMT-tf does: Keras first, then the registry.

    Raises:
      ConfigError: if the name is unknown, listing the valid names and the closest one.
    """
    if not isinstance(name, str):
        raise invalid("params.decay_type", name, "a schedule name (a string)")
    keras = _keras_schedules()
    if name in keras:
        return keras[name]
    if name in schedules.SCHEDULES:
        return schedules.SCHEDULES[name]
    try:
        return opennmt.schedules.lr_schedules.get_lr_schedule_class(name)
    except ValueError:
        raise unknown_name("params.decay_type", name, schedule_names()) from None


def _check_piecewise(args: dict[str, Any]) -> None:
    boundaries, values = args.get("boundaries"), args.get("values")
    if not isinstance(boundaries, (list, tuple)) or not boundaries:
        raise invalid("decay_params.boundaries", boundaries, "a non-empty list of steps")
    for a, b in zip(boundaries, boundaries[1:]):
        if not b > a:
            raise invalid("decay_params.boundaries", boundaries, "strictly increasing")
    args["boundaries"] = [
        check_number("decay_params.boundaries[]", boundary, minimum=0, integer=True)
        for boundary in boundaries
    ]
    if not isinstance(values, (list, tuple)) or len(values) != len(boundaries) + 1:
        raise invalid(
            "decay_params.values", values,
            f"a list of {len(boundaries) + 1} rates (one more than boundaries)",
        )
    for value in values:
        check_number("decay_params.values[]", value, minimum=0)


def _constructor_arguments(cls: type) -> tuple[list[str], list[str]]:
    """Returns (all argument names, required argument names) of ``cls.__init__``."""
    signature = inspect.signature(cls.__init__)
    names, required = [], []
    for parameter in list(signature.parameters.values())[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        names.append(parameter.name)
        if parameter.default is parameter.empty:
            required.append(parameter.name)
    return names, required


def _remaining_steps(
    key: str, params: Mapping[str, Any], max_step: int | None, warmup_steps: int
) -> int:
    """Resolves ``key: max_step`` to the schedule steps left after warmup and delay."""
    if max_step is None:
        raise ConfigError(
            f"decay_params.{key} is 'max_step' but train.max_step is not set; "
            "set train.max_step or give a number of steps"
        )
    max_step = _check({"max_step": max_step}, "train.max_step")
    start = params.get("start_decay_steps", 0)
    duration = params.get("decay_step_duration", 1)
    remaining = (max_step - warmup_steps - start) // duration
    if remaining < 1:
        raise ConfigError(
            f"decay_params.{key} is 'max_step' but no step is left to decay: "
            f"(train.max_step {max_step} - params.warmup_steps {warmup_steps} "
            f"- params.start_decay_steps {start}) // params.decay_step_duration {duration} "
            f"= {remaining}; it must be >= 1"
        )
    return remaining


def _schedule_arguments(
    cls: type, params: Mapping[str, Any], max_step: int | None, warmup_steps: int
) -> dict[str, Any]:
    decay_params = params.get("decay_params")
    args = {} if decay_params is None else _as_dict("params.decay_params", decay_params)
    names, required = _constructor_arguments(cls)
    for key in args:
        if key not in names:
            raise unknown_name("params.decay_params", key, names)
    first = names[0]
    if first not in args and params.get("learning_rate") is not None:
        args[first] = params["learning_rate"]
    for key, value in args.items():
        if value == MAX_STEP:
            if key not in LENGTH_KEYS:
                raise invalid(
                    f"decay_params.{key}", value,
                    f"a number ('max_step' is accepted only for {', '.join(LENGTH_KEYS)})",
                )
            args[key] = _remaining_steps(key, params, max_step, warmup_steps)
    missing = [name for name in required if name not in args]
    if missing:
        what = "params.learning_rate or decay_params." if missing[0] == first else "decay_params."
        raise ConfigError(f"{what}{missing[0]} is required by {cls.__name__}")
    for key, bounds in _KERAS_BOUNDS.get(cls.__name__, {}).items():
        if args.get(key) is not None:
            args[key] = check_number(f"decay_params.{key}", args[key], **bounds)
    if cls.__name__ == "PiecewiseConstantDecay":
        _check_piecewise(args)
    return args


_SCHEDULE_KEYS = (
    "learning_rate", "start_decay_steps", "decay_step_duration", "minimum_learning_rate", "warmup_steps",
    "warmup_learning_rate",
)
"""The ``params`` keys of the schedule, checked with their bounds in :data:`keys.PLUGIN_KEYS`."""


def _check(section: Mapping[str, Any], path: str) -> Any:
    """Checks the number at ``path`` of :data:`keys.PLUGIN_KEYS` in ``section`` (its bounds);
    returns it (an integral float as ``int``), or ``None`` when it is not set."""
    key = keys.plugin_key(path)
    value = section.get(key.name)
    return None if value is None else check_number(key.path, value, **(key.bounds or {}))


def _check_params(params: dict[str, Any]) -> None:
    """Checks the ``params`` keys of the schedule; stores integral floats as ``int``."""
    for name in _SCHEDULE_KEYS:
        if params.get(name) is not None:
            params[name] = _check(params, f"params.{name}")


def learning_rate_schedule(
    params: Mapping[str, Any], max_step: int | None = None, auto_config: bool = False
) -> schedules.ScheduleWrapper | None:
    """Builds the learning-rate schedule that ``params`` describes, as training does.

    Args:
      params: The ``params`` section of the configuration (not modified).
      max_step: ``train.max_step``, used where a schedule length is ``max_step``.
      auto_config: ``decay_type`` comes from the model's automatic configuration
        (``onmt-main --auto_config``), not from the user's YAML; error messages say so.

    Returns:
      A :class:`~onmt_trainkit.schedules.ScheduleWrapper`, or ``None`` when ``params``
      asks for a constant rate (no ``decay_type`` and no warmup), as in OpenNMT-tf.

    Raises:
      ConfigError: naming the first key whose value cannot be used.
    """
    params = _as_dict("params", params)
    _check_params(params)
    warmup_steps = params.get("warmup_steps") or 0
    decay_type = params.get("decay_type")
    if decay_type is None:
        if warmup_steps == 0:
            if params.get("learning_rate") is None:
                raise ConfigError("params.learning_rate is required when no decay_type is set")
            return None
        if params.get("learning_rate") is None:
            raise ConfigError("params.learning_rate is required by params.warmup_steps")
        schedule = schedules.Constant(params["learning_rate"])
    else:
        cls = schedule_class(decay_type)
        args = _schedule_arguments(cls, params, max_step, warmup_steps)
        schedule = _construct(cls, args)
        _check_single_warmup(cls, schedule, params, warmup_steps, auto_config)
    return schedules.ScheduleWrapper(
        schedule,
        step_start=params.get("start_decay_steps", 0),
        step_duration=params.get("decay_step_duration", 1),
        minimum_learning_rate=params.get("minimum_learning_rate", 0),
        warmup_steps=warmup_steps,
        warmup_learning_rate=params.get("warmup_learning_rate") or 0,
    )


def resolve_max_step(
    params: Mapping[str, Any], max_step: int | None, auto_config: bool = False
) -> dict[str, Any]:
    """Returns a copy of ``params`` where each length written ``max_step`` is its number.

    OpenNMT-tf tunes the batch size (``train.batch_size: 0``) with a few training steps in
    subprocesses that set ``train.max_step: 5``; given this copy, they build the schedule
    of the real run instead of one resolved against 5 steps.

    Args:
      params: The ``params`` section of the configuration (not modified).
      max_step: ``train.max_step`` of the real run.
      auto_config: As in :func:`learning_rate_schedule`.

    Raises:
      ConfigError: if ``params`` does not describe a valid schedule (checked first).
    """
    learning_rate_schedule(params, max_step=max_step, auto_config=auto_config)
    params = _as_dict("params", params)
    _check_params(params)
    if params.get("decay_type") is None or params.get("decay_params") is None:
        return params
    decay_params = _as_dict("params.decay_params", params["decay_params"])
    for key, value in decay_params.items():
        if value == MAX_STEP:
            decay_params[key] = _remaining_steps(key, params, max_step, params.get("warmup_steps") or 0)
    params["decay_params"] = decay_params
    return params


def _own_warmup(cls: type, decay_params: Mapping[str, Any]) -> tuple[Any, bool, bool]:
    """Returns the schedule's own warmup length (``None`` or 0: it has none), whether
    ``decay_params`` sets it (else it is the default), and whether leaving it out turns it off.

    A schedule has its own warmup when its constructor takes ``warmup_steps`` and the value
    is not 0 or ``None``; Keras's ``CosineDecay`` warms up only with a ``warmup_target``.
    """
    parameters = inspect.signature(cls.__init__).parameters
    parameter = parameters.get("warmup_steps")
    if parameter is None:
        return None, False, False
    if "warmup_target" in parameters and decay_params.get("warmup_target") is None:
        return None, False, False
    has_default = parameter.default is not parameter.empty
    default = parameter.default if has_default else None
    return decay_params.get("warmup_steps", default), "warmup_steps" in decay_params, has_default and not default


def _flow(mapping: Mapping[str, Any]) -> str:
    """Writes a mapping as a YAML flow mapping: ``{model_dim: 512, warmup_steps: 20}``."""
    return "{" + ", ".join(f"{key}: {value}" for key, value in mapping.items()) + "}"


def _check_single_warmup(
    cls: type, schedule: Any, params: Mapping[str, Any], warmup_steps: int, auto_config: bool
) -> None:
    """Refuses ``params.warmup_steps`` in front of a schedule that has its own warmup.

    The wrapper's warmup ramps to S(0), the schedule's tiny first value, and only then does
    the schedule's own warmup start: two warmups, the first one useless.
    """
    decay_params = _as_dict("params.decay_params", params.get("decay_params") or {})
    own, given, optional = _own_warmup(cls, decay_params)
    if not warmup_steps or not own:
        return
    name = cls.__name__
    first = float(schedule(tf.constant(0, tf.int64)))
    source = f"--auto_config sets decay_type: {name}, which" if auto_config else f"decay_type {name}"
    default = "" if given else ", its default"
    message = (
        f"params.warmup_steps: {warmup_steps} would add a second warmup: {source} has its own "
        f"(decay_params.warmup_steps: {own}{default}); the rate would rise to {name}'s first "
        f"value {first:.3g} over {warmup_steps} steps, then go through {name}'s warmup. "
        f"To warm up over {warmup_steps} steps, remove params.warmup_steps and "
    )
    if auto_config:
        replacement = _flow({**decay_params, "warmup_steps": warmup_steps})
        message += (
            f"write params.decay_params: {replacement} (it replaces the automatic "
            "decay_params whole)"
        )
    else:
        message += f"set decay_params.warmup_steps: {warmup_steps}"
    if optional:
        keys = " and warmup_target" if "warmup_target" in decay_params else ""
        message += f"; or keep params.warmup_steps and remove decay_params.warmup_steps{keys}"
    else:
        message += (
            "; or keep params.warmup_steps with a params.decay_type that has no warmup "
            "(e.g. PolynomialDecay, CosineDecay, WarmupStableDecay)"
        )
    raise ConfigError(message)


def _construct(cls: Callable[..., Any], args: dict[str, Any]) -> Any:
    try:
        return cls(**args)
    except ConfigError as error:
        raise ConfigError(f"decay_params.{error}") from None


def moving_average_decay(value: Any) -> tuple[float, ...]:
    """Checks ``train.moving_average_decay``: a number in the open interval (0, 1), or a
    non-empty list of distinct such numbers; returns the decays."""
    return check_decays(value, key="train.moving_average_decay")


@dataclasses.dataclass(frozen=True)
class MovingAverageSettings:
    """The ``train`` keys of the moving average, checked."""

    decays: tuple[float, ...]
    """``moving_average_decay``: the first is swapped into every checkpoint's model weights."""
    start_step: int = 0
    """``moving_average_start_step``: the step whose update copies the weights."""
    every: int = 1
    """``moving_average_every``: the period of the updates, in steps."""
    eval_all: bool = False
    """``moving_average_eval_all``: evaluate every average and the training weights."""


MOVING_AVERAGE_KEYS = ("moving_average_start_step", "moving_average_every", "moving_average_eval_all")
"""The ``train`` keys that tune ``train.moving_average_decay``."""


def moving_average_settings(train: Mapping[str, Any]) -> MovingAverageSettings | None:
    """Checks the moving-average keys of the ``train`` section.

    Returns:
      The settings, or ``None`` when ``train.moving_average_decay`` is not set.

    Raises:
      ConfigError: naming the key, the value and what is allowed.
    """
    train = _as_dict("train", train or {})
    start_step = _check(train, "train.moving_average_start_step")
    every = _check(train, "train.moving_average_every")
    eval_all = train.get("moving_average_eval_all")
    if eval_all is not None and not isinstance(eval_all, bool):
        raise invalid("train.moving_average_eval_all", eval_all, "true or false")
    if train.get("moving_average_decay") is None:
        return None
    return MovingAverageSettings(
        decays=moving_average_decay(train["moving_average_decay"]),
        start_step=start_step or 0,
        every=every or 1,
        eval_all=bool(eval_all),
    )


ABSOLUTE_DECAY_WARNING = 1e-3
"""``optimizer_params.weight_decay`` above this value logs a warning."""


def _optimizer_params(params: Mapping[str, Any]) -> dict[str, Any]:
    value = params.get("optimizer_params")
    return {} if value is None else _as_dict("params.optimizer_params", value)


def _exclude_patterns(value: Any) -> tuple[str, ...]:
    key = "params.weight_decay_exclude"
    if not isinstance(value, (list, tuple)):
        raise invalid(key, value, "a list of regular expressions ([] decays every weight)")
    for pattern in value:
        if not isinstance(pattern, str) or not pattern:
            raise invalid(f"{key}[]", pattern, "a non-empty regular expression (a string)")
        try:
            re.compile(pattern)
        except re.error as error:
            raise invalid(f"{key}[]", pattern, f"a valid regular expression ({error})") from None
    return tuple(value)


def _has_decoupled_weight_decay(optimizer_name: Any) -> bool:
    """Whether OpenNMT-tf's optimizer ``optimizer_name`` requires a ``weight_decay``."""
    try:
        cls = get_optimizer_class(optimizer_name)
    except (ValueError, TypeError):
        return False  # OpenNMT-tf reports an unknown optimizer itself
    return issubclass(cls, DecoupledWeightDecayExtension)


SCALED_DECAY_OPTIMIZERS = (
    "Adadelta", "Adagrad", "Adam", "Adamax", "AdamW", "ConditionalGradient", "LazyAdam", "Nadam",
    "ProximalAdagrad", "RectifiedAdam", "RMSprop", "SGD", "SGDW",
)
"""The optimizers OpenNMT-tf builds that take ``params.weight_decay``; the others it builds are
refused with the reason in :data:`_NO_SCALED_DECAY`."""

_NO_SCALED_DECAY = {
    "LAMB": (
        "LAMB reads a weight_decay of its own (TensorFlow Addons adds weight_decay * w to its "
        "update, before the layer-wise trust ratio and the learning rate), which this decay would "
        "replace; OpenNMT-tf cannot set it alone (optimizer_params.weight_decay also adds "
        "TensorFlow Addons' unscaled decay)"
    ),
    "NovoGrad": (
        "NovoGrad reads a weight_decay of its own (TensorFlow Addons adds weight_decay * w to the "
        "normalised gradient, before its momentum), which this decay would replace; OpenNMT-tf "
        "cannot set it alone (optimizer_params.weight_decay also adds TensorFlow Addons' "
        "unscaled decay)"
    ),
    "AdaBelief": (
        "TensorFlow Addons' AdaBelief cannot be extended with decoupled weight decay (its update "
        "takes no apply_state); its own weight_decay cannot be set through OpenNMT-tf either"
    ),
    "Yogi": (
        "TensorFlow Addons' Yogi cannot be extended with decoupled weight decay (its update takes "
        "no apply_state); it regularises with optimizer_params.l2_regularization_strength"
    ),
    "Ftrl": (
        "Ftrl computes each weight from its accumulators, so a decay applied to the weight before "
        "its step is almost entirely undone; it regularises with "
        "optimizer_params.l2_regularization_strength or l2_shrinkage_regularization_strength"
    ),
}


def _check_scaled_decay_optimizer(optimizer_name: Any) -> None:
    """Refuses ``params.weight_decay`` with an optimizer of :data:`_NO_SCALED_DECAY`."""
    try:
        cls = get_optimizer_class(optimizer_name)
    except (ValueError, TypeError):
        return  # OpenNMT-tf reports an unknown optimizer itself
    reason = _NO_SCALED_DECAY.get(cls.__name__)
    if reason is not None:
        raise ConfigError(
            f"params.weight_decay cannot be combined with params.optimizer {optimizer_name}: "
            f"{reason}. params.weight_decay works with {', '.join(SCALED_DECAY_OPTIMIZERS)}"
        )


def weight_decay(params: Mapping[str, Any]) -> WeightDecay | None:
    """Checks ``params.weight_decay``, ``params.weight_decay_exclude`` and
    ``optimizer_params.weight_decay``.

    ``params.weight_decay`` (lambda) decays ``w -= lr(s) * lambda * w`` at every update;
    ``optimizer_params.weight_decay`` keeps OpenNMT-tf's meaning (TensorFlow Addons subtracts
    ``weight_decay * w`` at every update, unscaled). Both at once are refused.

    Args:
      params: The ``params`` section of the configuration (not modified).

    Returns:
      The settings of the learning-rate-scaled decay, or ``None`` when ``params.weight_decay``
      is not set or 0.

    Raises:
      ConfigError: naming the key whose value cannot be used, or both keys when both are set,
        or ``params.weight_decay`` > 0 with an optimizer not in :data:`SCALED_DECAY_OPTIMIZERS`.
    """
    params = _as_dict("params", params)
    optimizer_params = _optimizer_params(params)
    scaled, absolute = params.get("weight_decay"), optimizer_params.get("weight_decay")
    exclude = params.get("weight_decay_exclude")
    if scaled is not None and absolute is not None:
        raise ConfigError(
            f"params.weight_decay ({scaled!r}) and optimizer_params.weight_decay ({absolute!r}) "
            "are both set; keep one: params.weight_decay decays w -= lr(s) * weight_decay * w "
            "(follows the learning rate), optimizer_params.weight_decay decays "
            "w -= weight_decay * w at every step (TensorFlow Addons, as given)"
        )
    if absolute is not None:
        check_number("optimizer_params.weight_decay", absolute, minimum=0)
    if scaled is None:
        if exclude is not None:
            raise ConfigError(
                "params.weight_decay_exclude is set but params.weight_decay is not; set "
                "params.weight_decay (with optimizer_params.weight_decay, TensorFlow Addons "
                "reads optimizer_params.exclude_from_weight_decay)"
            )
    else:
        _check(params, "params.weight_decay")
        if "exclude_from_weight_decay" in optimizer_params:
            raise ConfigError(
                "optimizer_params.exclude_from_weight_decay is set with params.weight_decay; "
                "use params.weight_decay_exclude instead"
            )
    patterns = DEFAULT_EXCLUDE if exclude is None else _exclude_patterns(exclude)
    optimizer = params.get("optimizer")
    if not scaled and absolute is None and _has_decoupled_weight_decay(optimizer):
        got = "none" if scaled is None else f"params.weight_decay {scaled!r}"
        raise ConfigError(
            f"params.optimizer {optimizer} needs a weight decay, got {got}: set "
            "params.weight_decay > 0 (w -= lr(s) * weight_decay * w) or "
            "optimizer_params.weight_decay (w -= weight_decay * w at every step), or use an "
            "optimizer without weight decay (e.g. Adam)"
        )
    if not scaled:
        return None
    _check_scaled_decay_optimizer(optimizer)
    return WeightDecay(float(scaled), patterns, exclude_given=exclude is not None)


def absolute_weight_decay_warning(params: Mapping[str, Any]) -> str | None:
    """Returns the warning for ``optimizer_params.weight_decay`` above
    :data:`ABSOLUTE_DECAY_WARNING`, which TensorFlow Addons applies unscaled at every step,
    or ``None``. ``params`` must have passed :func:`weight_decay`."""
    value = _optimizer_params(params).get("weight_decay")
    if value is None or value <= ABSOLUTE_DECAY_WARNING:
        return None
    return (
        f"optimizer_params.weight_decay is {value:g}: TensorFlow Addons applies it as given at "
        f"every step, not scaled by the learning rate, w -= {value:g} * w after each update, so "
        f"after 100 steps every decayed weight is multiplied by {(1 - value) ** 100:.2g} (before "
        f"the gradient updates); for decay that follows the learning rate (w -= lr(s) * "
        f"{value:g} * w, as in BERT and PyTorch's AdamW), set params.weight_decay: {value:g} "
        "instead"
    )
