"""Learning-rate curves of configurations, as CSV and as a picture.

A curve evaluates the very schedule object that training builds from the configuration
(:func:`onmt_trainkit.config.learning_rate_schedule`), at every step at once.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np
import opennmt
import yaml

from onmt_trainkit import config as config_lib
from onmt_trainkit import schedules
from onmt_trainkit.errors import ConfigError


@dataclass(frozen=True)
class Curve:
    """The learning rate of one configuration at steps 0 to N."""

    label: str
    values: np.ndarray
    warmup_end: int | None
    floor: float | None

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


def curve_from_files(paths: Sequence[str], max_step: int | None = None) -> Curve:
    """Builds the curve of the configuration merged from ``paths``.

    Args:
      paths: YAML files, merged in order.
      max_step: The last step; defaults to ``train.max_step``.

    Raises:
      ConfigError: for a configuration that training would refuse too.
    """
    run_config = load_config(paths)
    params = run_config.get("params") or {}
    train_max_step = (run_config.get("train") or {}).get("max_step")
    last = max_step if max_step is not None else train_max_step
    if last is None:
        raise ConfigError(f"{' '.join(paths)}: train.max_step is not set; give --max_step")
    schedule = config_lib.learning_rate_schedule(params, max_step=train_max_step)
    steps = np.arange(int(last) + 1)
    if schedule is None:
        values = np.full(steps.shape, float(params["learning_rate"]))
    else:
        values = schedules.evaluate(schedule, steps)
    label = " + ".join(os.path.splitext(os.path.basename(p))[0] for p in paths)
    floor = params.get("minimum_learning_rate") or None
    return Curve(label=label, values=values, warmup_end=_warmup_end(params), floor=floor)


def write_csv(curves: Sequence[Curve], path: str) -> None:
    """Writes a ``step`` column and one column per curve, steps 0 to N."""
    length = max(len(c.values) for c in curves)
    temporary = _aside(path)
    with open(temporary, "w", newline="", encoding="utf-8") as output:
        writer = csv.writer(output)
        writer.writerow(["step", *(c.label for c in curves)])
        for step in range(length):
            writer.writerow(
                [step, *(f"{c.values[step]:.9g}" if step < len(c.values) else "" for c in curves)]
            )
    os.replace(temporary, path)


def _aside(path: str) -> str:
    """Returns a temporary path beside ``path``, to write to before renaming."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.tmp")


def plot(curves: Sequence[Curve], path: str) -> None:
    """Draws the curves, marking each one's end of warmup (dotted), peak (dot) and floor (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    for curve in curves:
        peak = curve.peak_step
        warmup = f"warmup {curve.warmup_end}, " if curve.warmup_end else ""
        (line,) = axes.plot(
            np.arange(len(curve.values)), curve.values,
            label=f"{curve.label} ({warmup}peak {curve.values[peak]:.3g} at step {peak})",
        )
        color = line.get_color()
        axes.plot([peak], [curve.values[peak]], "o", color=color)
        if curve.warmup_end is not None and curve.warmup_end < len(curve.values):
            axes.axvline(curve.warmup_end, color=color, linestyle=":", linewidth=1)
        if curve.floor is not None:
            axes.axhline(curve.floor, color=color, linestyle="--", linewidth=1)
            axes.annotate(f"floor {curve.floor:.3g}", (len(curve.values) - 1, curve.floor),
                          xytext=(-3, 3), textcoords="offset points", ha="right",
                          fontsize=8, color=color)
    axes.set_xlabel("training step")
    axes.set_ylabel("learning rate")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    temporary = _aside(path)
    figure.savefig(temporary, format=os.path.splitext(path)[1][1:] or "png", dpi=120)
    plt.close(figure)
    os.replace(temporary, path)
