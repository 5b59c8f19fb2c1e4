"""Learning-rate curves of configurations, as CSV and as a picture.

A curve evaluates the very schedule object that training builds from the configuration
(:func:`onmt_trainkit.config.learning_rate_schedule`), at every step at once, and the weight
decay coefficient c(s) of the update at each step (``w -= c(s) * w``): ``lr(s) * lambda``
for ``params.weight_decay``, the constant ``optimizer_params.weight_decay`` (TensorFlow
Addons applies it unscaled), or 0.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Any
from collections.abc import Sequence

import numpy as np
import opennmt
import yaml

from onmt_trainkit import config as config_lib
from onmt_trainkit import schedules
from onmt_trainkit.errors import ConfigError


@dataclass(frozen=True)
class Curve:
    """The learning rate of one configuration at steps 0 to N, and its weight decay.

    Attributes:
      label: The configuration files' names.
      values: lr(s) at steps 0 to N.
      warmup_end: The end of the warmup, if any.
      floor: ``minimum_learning_rate``, if set.
      weight_decay: c(s) at steps 0 to N, the decay coefficient of ``w -= c(s) * w``.
      weight_decay_rule: How c(s) is made, for the legend.
    """

    label: str
    values: np.ndarray
    warmup_end: int | None
    floor: float | None
    weight_decay: np.ndarray
    weight_decay_rule: str

    @property
    def peak_step(self) -> int:
        return int(np.argmax(self.values))


def load_config(paths: Sequence[str]) -> dict:
    """Loads and merges YAML files as ``onmt-main --config`` does.

    Raises:
      ConfigError: for a missing or unreadable file.
    """
    merged: dict = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as config_file:
                loaded = yaml.safe_load(config_file)
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} not found") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: invalid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a configuration must be a mapping of sections, got {loaded!r}")
        opennmt.config.merge_config(merged, loaded)
    return merged


def _warmup_end(params: dict) -> int | None:
    warmup = params.get("warmup_steps") or 0
    if warmup:
        return int(warmup)
    decay_params = params.get("decay_params") or {}
    if params.get("decay_type") == "NoamDecay" and decay_params.get("warmup_steps"):
        return int(decay_params["warmup_steps"])
    return None


def _weight_decay(params: dict, learning_rates: np.ndarray) -> tuple[np.ndarray, str]:
    """Returns c(s) and its rule, for the learning rates lr(s)."""
    decay = config_lib.weight_decay(params)
    if decay is not None:
        return decay.coefficient * learning_rates, f"lr(s) x {decay.coefficient:g}"
    absolute = (params.get("optimizer_params") or {}).get("weight_decay")
    if absolute:
        return np.full(learning_rates.shape, float(absolute)), f"{absolute:g} unscaled"
    return np.zeros(learning_rates.shape), "no weight decay"


def curve_from_files(paths: Sequence[str], max_step: int | None = None) -> Curve:
    """Builds the curve of the configuration merged from ``paths``.

    Args:
      paths: YAML files, merged in order.
      max_step: The last step; defaults to ``train.max_step``. Without ``train.max_step``
        (a recipe alone), also the run's length where a schedule length is ``max_step``.

    Raises:
      ConfigError: for a configuration that training would refuse too.
    """
    run_config = load_config(paths)
    params = run_config.get("params") or {}
    train_max_step = (run_config.get("train") or {}).get("max_step")
    last = max_step if max_step is not None else train_max_step
    if last is None:
        raise ConfigError(f"{' '.join(paths)}: train.max_step is not set; give --max_step")
    run_length = train_max_step if train_max_step is not None else last
    schedule = config_lib.learning_rate_schedule(params, max_step=run_length)
    steps = np.arange(int(last) + 1)
    if schedule is None:
        values = np.full(steps.shape, float(params["learning_rate"]))
    else:
        values = schedules.evaluate(schedule, steps)
    weight_decay, rule = _weight_decay(params, values)
    label = " + ".join(os.path.splitext(os.path.basename(p))[0] for p in paths)
    floor = params.get("minimum_learning_rate") or None
    return Curve(label=label, values=values, warmup_end=_warmup_end(params), floor=floor,
                 weight_decay=weight_decay, weight_decay_rule=rule)


def write_csv(curves: Sequence[Curve], path: str, weight_decay: bool = False) -> None:
    """Writes a ``step`` column and one column per curve, steps 0 to N; with
    ``weight_decay``, each curve's column is followed by ``<label> weight_decay``, c(s)."""
    columns = [(c.label, c.values) for c in curves]
    if weight_decay:
        columns = [
            column
            for c in curves
            for column in ((c.label, c.values), (f"{c.label} weight_decay", c.weight_decay))
        ]
    length = max(len(values) for _, values in columns)
    temporary = _aside(path)
    with open(temporary, "w", newline="", encoding="utf-8") as output:
        writer = csv.writer(output)
        writer.writerow(["step", *(name for name, _ in columns)])
        for step in range(length):
            writer.writerow(
                [step, *(f"{v[step]:.9g}" if step < len(v) else "" for _, v in columns)]
            )
    os.replace(temporary, path)


def _aside(path: str) -> str:
    """Returns a temporary path beside ``path``, to write to before renaming."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.tmp")


def plot(curves: Sequence[Curve], path: str, weight_decay: bool = False) -> None:
    """Draws the curves, marking each one's end of warmup (dotted), peak (dot) and floor
    (dashed); with ``weight_decay``, a second panel below draws each curve's c(s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if weight_decay:
        figure, (axes, decay_axes) = plt.subplots(
            2, 1, figsize=(8, 7), sharex=True, height_ratios=(3, 2)
        )
    else:
        figure, axes = plt.subplots(figsize=(8, 4.5))
    colors = []
    for curve in curves:
        peak = curve.peak_step
        warmup = f"warmup {curve.warmup_end}, " if curve.warmup_end else ""
        (line,) = axes.plot(
            np.arange(len(curve.values)), curve.values,
            label=f"{curve.label} ({warmup}peak {curve.values[peak]:.3g} at step {peak})",
        )
        color = line.get_color()
        colors.append(color)
        axes.plot([peak], [curve.values[peak]], "o", color=color)
        if curve.warmup_end is not None and curve.warmup_end < len(curve.values):
            axes.axvline(curve.warmup_end, color=color, linestyle=":", linewidth=1)
        if curve.floor is not None:
            axes.axhline(curve.floor, color=color, linestyle="--", linewidth=1)
            axes.annotate(f"floor {curve.floor:.3g}", (len(curve.values) - 1, curve.floor),
                          xytext=(-3, 3), textcoords="offset points", ha="right",
                          fontsize=8, color=color)
    axes.set_ylabel("learning rate")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    if weight_decay:
        _plot_weight_decay(decay_axes, curves, colors)
        axes = decay_axes
    axes.set_xlabel("training step")
    figure.tight_layout()
    temporary = _aside(path)
    figure.savefig(temporary, format=os.path.splitext(path)[1][1:] or "png", dpi=120)
    plt.close(figure)
    os.replace(temporary, path)


LOG_SCALE_SPREAD = 100
"""The weight decay panel is drawn on a log scale when the largest peak of c(s) is more than
this many times the smallest non-zero peak (unscaled and scaled decays side by side)."""


def _plot_weight_decay(axes: Any, curves: Sequence[Curve], colors: Sequence[str]) -> None:
    """Draws c(s) of each curve, in the colour of its learning rate."""
    for curve, color in zip(curves, colors):
        peak = float(curve.weight_decay.max())
        described = f"{curve.weight_decay_rule}, peak {peak:.3g}" if peak > 0 else curve.weight_decay_rule
        axes.plot(np.arange(len(curve.weight_decay)), curve.weight_decay, color=color,
                  label=f"{curve.label} ({described})")
    peaks = [float(c.weight_decay.max()) for c in curves if c.weight_decay.max() > 0]
    if peaks and max(peaks) > LOG_SCALE_SPREAD * min(peaks):
        axes.set_yscale("log")
    else:
        axes.set_ylim(bottom=0)
    axes.set_ylabel("weight decay c(s): w -= c(s) * w")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
