"""The YAML keys: those the plugin reads (one table, the source of the checks' bounds, of the
configuration reference and of the unknown-key warning) and those OpenNMT-tf 2.32 reads.

A key in a section (``data``, ``params``, ``train``, ``eval``, ``infer``, ``score``) or at the
top level that neither reads is most likely a typo, which OpenNMT-tf would silently ignore:
:func:`unknown_keys` names it with the closest known key.

This module imports neither TensorFlow nor OpenNMT-tf.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterator, Mapping
from typing import Any

SECTIONS = ("data", "params", "train", "eval", "infer", "score")
"""The configuration's sections whose keys are checked."""

TOP_LEVEL = frozenset({"model_dir", "auto_config", *SECTIONS})
"""The keys of a configuration's top level."""

OPENNMT_KEYS: dict[str, frozenset[str]] = {
    "data": frozenset({
        "train_features_file", "train_labels_file", "train_files_weights", "train_alignments",
        "example_weights", "eval_features_file", "eval_labels_file", "export_vocabulary_assets",
        "tagging_scheme",
    }),
    "params": frozenset({
        "optimizer", "optimizer_params", "learning_rate", "dropout", "freeze_layers", "regularization",
        "average_loss_in_time", "mask_loss_outliers", "decay_type", "decay_params", "decay_step_duration",
        "start_decay_steps", "minimum_learning_rate", "scheduled_sampling_type",
        "scheduled_sampling_read_probability", "scheduled_sampling_k", "label_smoothing", "beam_width",
        "num_hypotheses", "length_penalty", "coverage_penalty", "sampling_topk", "sampling_temperature",
        "decoding_noise", "decoding_subword_token", "decoding_subword_token_is_spacer",
        "minimum_decoding_length", "maximum_decoding_length", "replace_unknown_target",
        "guided_alignment_type", "guided_alignment_weight", "contrastive_learning", "max_margin_eta",
        "tflite_output_size",
    }),
    "train": frozenset({
        "batch_size", "batch_type", "effective_batch_size", "save_checkpoints_steps", "keep_checkpoint_max",
        "save_summary_steps", "max_step", "single_pass", "maximum_features_length", "maximum_labels_length",
        "length_bucket_width", "sample_buffer_size", "moving_average_decay", "average_last_checkpoints",
        # Read by OpenNMT-tf 2.32's code, not in its configuration reference:
        "batch_autotune_mode", "batch_size_autotune_scale", "batch_size_autotune_timeout",
        "pad_to_bucket_boundary", "prefetch_buffer_size",
    }),
    "eval": frozenset({
        "batch_size", "batch_type", "steps", "save_eval_predictions", "scorers", "length_bucket_width",
        "export_on_best", "export_format", "max_exports_to_keep", "early_stopping",
        # Read by OpenNMT-tf 2.32's code, not in its configuration reference:
        "external_evaluators",
    }),
    "infer": frozenset({
        "batch_size", "batch_type", "n_best", "with_scores", "with_alignments", "length_bucket_width",
        # Read by OpenNMT-tf 2.32's code, not in its configuration reference:
        "prefetch_buffer_size",
    }),
    "score": frozenset({
        "batch_size", "batch_type", "length_bucket_width", "with_token_level", "with_alignments",
        # Read by OpenNMT-tf 2.32's code, not in its configuration reference:
        "prefetch_buffer_size",
    }),
}
"""The keys OpenNMT-tf 2.32 reads in each section (its configuration reference, and the few more
that its code reads)."""

INPUTTER_KEYS = ("vocabulary", "tokenization", "embedding", "sequence_controls", "export_vocabulary_assets")
"""The ``data`` keys that OpenNMT-tf's text inputters read relative to their prefix:
``source_vocabulary``, ``target_tokenization``, ``source_1_embedding``, or unprefixed (a
language model's ``vocabulary``)."""

_INPUTTER_KEY = re.compile(
    r"^(?:(?:source|target)(?:_\d+)*_)?(?:" + "|".join(INPUTTER_KEYS) + r")$"
)


@dataclasses.dataclass(frozen=True)
class Key:
    """A YAML key that the plugin reads."""

    section: str
    """Where it is: ``params``, ``train`` or ``params.decay_params``."""
    name: str
    kind: str
    """Its type, as the reference shows it."""
    default: str
    """Its default, as the reference shows it."""
    allowed: str
    """What values are accepted."""
    example: Any
    """A value that is accepted."""
    meaning: str
    new: bool
    """Whether the plugin adds the key (else it is OpenNMT-tf's, read or checked by the plugin)."""
    bounds: Mapping[str, Any] | None = None
    """For a number: the bounds that :func:`onmt_trainkit.errors.check_number` checks."""

    @property
    def path(self) -> str:
        return f"{self.section}.{self.name}"


_NON_NEGATIVE = {"minimum": 0}
_STEPS = {"minimum": 0, "integer": True}
_PERIOD = {"minimum": 1, "integer": True}

PLUGIN_KEYS: tuple[Key, ...] = (
    Key("params", "learning_rate", "number", "required", ">= 0", 7.0e-4,
        "The peak rate; also the schedule's first argument unless `decay_params` sets it (Noam's `scale`, "
        "Keras's `initial_learning_rate`).", new=False, bounds=_NON_NEGATIVE),
    Key("params", "decay_type", "string", "none: a constant rate", "a schedule of Keras, of OpenNMT-tf, or "
        "of the plugin (`WarmupStableDecay`, `Constant`); Keras names win", "CosineDecay",
        "The schedule S. Unknown names are refused with the closest valid one.", new=False),
    Key("params", "decay_params", "mapping", "{}", "the schedule's constructor arguments; a length "
        "(`decay_steps`, `first_decay_steps`, `total_steps`, `max_step`) may be `max_step`",
        {"decay_steps": "max_step", "alpha": 0.1},
        "The schedule's arguments. A length written `max_step` is `(train.max_step - warmup_steps - "
        "start_decay_steps) // decay_step_duration`: the decay ends when training does.", new=False),
    Key("params", "start_decay_steps", "integer", "0", ">= 0", 0,
        "Hold the schedule at S(0) for this many steps after the warmup.", new=False, bounds=_STEPS),
    Key("params", "decay_step_duration", "integer", "1", ">= 1", 1,
        "Training steps per schedule step.", new=False, bounds=_PERIOD),
    Key("params", "minimum_learning_rate", "number", "0", ">= 0", 1.0e-5,
        "The floor, applied after the warmup.", new=False, bounds=_NON_NEGATIVE),
    Key("params", "warmup_steps", "integer", "0", ">= 0; refused in front of a schedule with a warmup "
        "of its own (NoamDecay...)", 4000,
        "Linear warmup over W steps in front of any schedule (or of a constant `learning_rate`).",
        new=True, bounds=_STEPS),
    Key("params", "warmup_learning_rate", "number", "0", ">= 0", 0.0,
        "The rate at step 0 of the warmup.", new=True, bounds=_NON_NEGATIVE),
    Key("params", "weight_decay", "number", "none: off", ">= 0; not with `optimizer_params.weight_decay`, "
        "nor with LAMB, NovoGrad, AdaBelief, Yogi or Ftrl", 0.01,
        "lambda of the decay `w -= lr(s) * lambda * w` at every update, which follows the learning rate.",
        new=True, bounds=_NON_NEGATIVE),
    Key("params", "weight_decay_exclude", "list of strings", "[bias, layer_norm]", "regular expressions; "
        "[] decays every weight; needs `weight_decay`", ["bias", "layer_norm"],
        "The weights that `weight_decay` leaves out (searched in the variables' names).", new=True),
    Key("params", "optimizer", "string", "required for training", "an optimizer OpenNMT-tf builds", "Adam",
        "Read by the plugin to build it with `weight_decay`.", new=False),
    Key("params", "optimizer_params", "mapping", "{}", "the optimizer's arguments; `weight_decay` >= 0 "
        "(TensorFlow Addons' unscaled decay, warned above 1e-3); `exclude_from_weight_decay` not with "
        "`params.weight_decay`", {"beta_1": 0.9, "beta_2": 0.98},
        "OpenNMT-tf's meaning; the plugin checks its weight decay keys.", new=False),
    Key("params.decay_params", "decay_fraction", "number", "none", "> 0 and <= 1; with `decay_type: "
        "WarmupStableDecay`, instead of `decay_steps`", 0.2,
        "WarmupStableDecay's final decay as a share f of `total_steps`: D = max(1, floor(f T + 1/2)).",
        new=True, bounds={"minimum": 0, "min_inclusive": False, "maximum": 1}),
    Key("train", "max_step", "integer", "none (--auto_config: 500000 for sequence-to-sequence models)", "> 0",
        100000,
        "OpenNMT-tf's length of the run; also resolves the lengths written `max_step`.", new=False,
        bounds={"minimum": 0, "min_inclusive": False, "integer": True}),
    Key("train", "moving_average_decay", "number or list of numbers", "none: off", "each > 0 and < 1, "
        "distinct", [0.9999, 0.999],
        "The plugin's moving averages of the weights; the first is swapped into every checkpoint's model "
        "weights, the raw weights and each average saved beside them.", new=False),
    Key("train", "moving_average_start_step", "integer", "0", ">= 0", 0,
        "The step whose update copies the weights into the averages.", new=True, bounds=_STEPS),
    Key("train", "moving_average_every", "integer", "1", ">= 1", 1,
        "The period of the averages' updates, in steps.", new=True, bounds=_PERIOD),
    Key("train", "moving_average_eval_all", "boolean", "false", "true or false", True,
        "With `--with_eval`, also evaluate the raw weights and every average.", new=True),
    Key("train", "average_last_checkpoints", "integer", "0 (--auto_config: 8 for Transformers)", ">= 0", 8,
        "OpenNMT-tf's: average the last N checkpoints into `model_dir/avg` at the end of training, with the "
        "plugin's averager.", new=False),
)
"""Every key the plugin reads, with what the configuration reference shows of it."""


def plugin_key(path: str) -> Key:
    """Returns the key of :data:`PLUGIN_KEYS` at ``path`` (``section.name``)."""
    for key in PLUGIN_KEYS:
        if key.path == path:
            return key
    raise KeyError(path)


_declared: set[tuple[str, str]] = set()
"""The keys that :func:`declare` added: (section, name)."""


def declare(*paths: str) -> None:
    """Declares keys that a model of your own reads (``"data.my_lexicon"``,
    ``"params.my_option"``), so that they are not warned about as unknown. Call it in the
    model file, beside ``import onmt_trainkit``.

    Raises:
      ValueError: for a path that is not ``section.name`` with one of :data:`SECTIONS`.
    """
    for path in paths:
        section, _, name = str(path).partition(".")
        if section not in SECTIONS or not name or "." in name:
            raise ValueError(
                f"onmt_trainkit.keys.declare: {path!r} must be section.name with a section of "
                f"{', '.join(SECTIONS)}"
            )
        _declared.add((section, name))


def known_keys(section: str) -> frozenset[str]:
    """The keys of ``section`` that OpenNMT-tf 2.32 or the plugin reads, or that a model
    declared (:func:`declare`); for ``data``, besides the inputters' prefixed keys,
    :data:`INPUTTER_KEYS`."""
    plugin = {key.name for key in PLUGIN_KEYS if key.section == section}
    declared = {name for declared_section, name in _declared if declared_section == section}
    return OPENNMT_KEYS[section] | plugin | declared


def _candidates(section: str) -> frozenset[str]:
    """The names a typo in ``section`` is compared with."""
    if section != "data":
        return known_keys(section)
    prefixed = {f"{side}_{name}" for side in ("source", "target") for name in INPUTTER_KEYS}
    return known_keys(section) | prefixed | set(INPUTTER_KEYS)


def is_known(section: str, name: str) -> bool:
    """Whether OpenNMT-tf 2.32 or the plugin reads key ``name`` of ``section``."""
    if name in known_keys(section):
        return True
    return section == "data" and bool(_INPUTTER_KEY.match(name))


@dataclasses.dataclass(frozen=True)
class UnknownKey:
    """A key that neither OpenNMT-tf 2.32 nor the plugin reads."""

    path: str
    closest: str | None

    def message(self) -> str:
        hint = f" (did you mean {self.closest}?)" if self.closest else ""
        declare = (
            f" (a model of your own that reads it can say so: onmt_trainkit.keys.declare({self.path!r}))"
            if "." in self.path else ""
        )
        return f"unknown key {self.path}{hint}: neither OpenNMT-tf 2.32 nor onmt-trainkit reads it{declare}"


def _closest(name: str, section: str | None) -> str | None:
    """The known key closest to ``name`` in ``section`` (the top level for ``None``), or the
    same key in another section (``train.moving_average_decay`` written under ``params``)."""
    if section is not None:
        elsewhere = [other for other in SECTIONS if other != section and is_known(other, name)]
        if elsewhere:
            return f"{elsewhere[0]}.{name}"
    candidates = TOP_LEVEL if section is None else _candidates(section)
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.75)
    return close[0] if close else None


def unknown_keys(config: Mapping[str, Any]) -> Iterator[UnknownKey]:
    """Yields the keys of ``config`` (top level and sections) that nothing reads, in order."""
    for name in config:
        if name not in TOP_LEVEL:
            yield UnknownKey(str(name), _closest(str(name), None))
    for section in SECTIONS:
        values = config.get(section)
        if not isinstance(values, Mapping):
            continue
        for name in values:
            if not is_known(section, str(name)):
                yield UnknownKey(f"{section}.{name}", _closest(str(name), section))


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def reference_table() -> str:
    """The Markdown table of :data:`PLUGIN_KEYS` that the configuration reference page shows."""
    lines = [
        "| key | type | default | allowed | example | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for key in PLUGIN_KEYS:
        origin = "**new**: " if key.new else ""
        lines.append(
            f"| `{key.path}` | {key.kind} | {key.default} | {key.allowed} | `{_value(key.example)}` | "
            f"{origin}{key.meaning} |"
        )
    return "\n".join(lines) + "\n"
