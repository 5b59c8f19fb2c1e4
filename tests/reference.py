"""The schedule formulas written again, independently, in numpy (float64)."""

from __future__ import annotations

import bisect
import math
from fractions import Fraction

import numpy as np


def noam(step, scale, model_dim, warmup_steps):
    t = np.asarray(step, dtype=np.float64) + 1
    return scale * model_dim**-0.5 * np.minimum(t**-0.5, t * warmup_steps**-1.5)


def polynomial(step, initial, decay_steps, end=0.0001, power=1.0):
    p = np.minimum(np.asarray(step, dtype=np.float64), decay_steps) / decay_steps
    return (initial - end) * (1 - p) ** power + end


def cosine(step, initial, decay_steps, alpha=0.0):
    p = np.minimum(np.asarray(step, dtype=np.float64), decay_steps) / decay_steps
    return initial * ((1 - alpha) * 0.5 * (1 + np.cos(np.pi * p)) + alpha)


def exponential(step, initial, decay_steps, rate, staircase=False):
    exponent = np.asarray(step, dtype=np.float64) / decay_steps
    if staircase:
        exponent = np.floor(exponent)
    return initial * rate**exponent


def inverse_time(step, initial, decay_steps, rate):
    return initial / (1 + rate * np.asarray(step, dtype=np.float64) / decay_steps)


def piecewise(step, boundaries, values):
    step = np.asarray(step)
    index = np.searchsorted(np.asarray(boundaries), step, side="left")
    return np.asarray(values, dtype=np.float64)[index]


def stable_decay(step, rate, total, decay, shape, end=0.0):
    p = np.clip((np.asarray(step, dtype=np.float64) - (total - decay)) / decay, 0, 1)
    factor = {"linear": 1 - p, "cosine": 0.5 * (1 + np.cos(math.pi * p)), "1-sqrt": 1 - np.sqrt(p)}[shape]
    return end + (rate - end) * factor


def wrapped(schedule, step, warmup=0, warmup_rate=0.0, start=0, duration=1, floor=0.0):
    """lr(s) = w0 + (S(0) - w0) s / W for s < W, else max(S((max(s - W - start, 0)) // k), m)."""
    step = np.asarray(step, dtype=np.int64)
    after = np.maximum(schedule(np.maximum(step - warmup - start, 0) // duration), floor)
    if warmup == 0:
        return after
    ramp = warmup_rate + (schedule(np.zeros_like(step)) - warmup_rate) * step / warmup
    return np.where(step < warmup, ramp, after)


def cosine_restarts(step, initial, first_decay_steps, t_mul=2.0, m_mul=1.0, alpha=0.0):
    fraction = np.asarray(step, dtype=np.float64) / first_decay_steps
    if t_mul == 1.0:
        restart = np.floor(fraction)
        fraction = fraction - restart
    else:
        restart = np.floor(np.log(1 - fraction * (1 - t_mul)) / np.log(t_mul))
        fraction = (fraction - (1 - t_mul**restart) / (1 - t_mul)) / t_mul**restart
    cosine = 0.5 * m_mul**restart * (1 + np.cos(np.pi * fraction))
    return initial * ((1 - alpha) * cosine + alpha)


_FINITE_BFLOAT16 = (np.arange(0x7F80, dtype=np.uint32) << 16).view(np.float32)  # every finite >= 0, by bits
_BFLOAT16_VALUES = [Fraction(float(v)) for v in _FINITE_BFLOAT16]
_BFLOAT16_OVERFLOW = _BFLOAT16_VALUES[-1] + (_BFLOAT16_VALUES[-1] - _BFLOAT16_VALUES[-2]) / 2


def exact_bfloat16(values) -> int:
    """The bits of the bfloat16 nearest (ties to even) to the exact mean of ``values``, found
    among all bfloat16 numbers with rational arithmetic; a NaN for a NaN or inf - inf."""
    values = [float(v) for v in values]
    if any(math.isnan(v) for v in values) or (math.inf in values and -math.inf in values):
        return 0x7FC0
    if math.inf in values or -math.inf in values:
        return 0x7F80 if math.inf in values else 0xFF80
    mean = sum(Fraction(v) for v in values) / len(values)
    sign, magnitude = (0x8000, -mean) if mean < 0 else (0, mean)
    if magnitude >= _BFLOAT16_OVERFLOW:
        return sign | 0x7F80
    index = bisect.bisect_right(_BFLOAT16_VALUES, magnitude) - 1
    if index + 1 == len(_BFLOAT16_VALUES) or magnitude == _BFLOAT16_VALUES[index]:
        return sign | index
    below, above = magnitude - _BFLOAT16_VALUES[index], _BFLOAT16_VALUES[index + 1] - magnitude
    if below < above or (below == above and index % 2 == 0):
        return sign | index
    return sign | (index + 1)
