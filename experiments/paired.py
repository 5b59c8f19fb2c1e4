"""Paired comparison of systems scored on the same test words: which words each got wrong,
kept compactly, and the paired bootstrap of their word error rates (Koehn, 2004, "Statistical
significance tests for machine translation evaluation").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pack(wrong: Sequence[bool]) -> str:
    """Which words are wrong, one bit a word in order, as a hexadecimal string."""
    return np.packbits(np.asarray(wrong, dtype=bool)).tobytes().hex()


def unpack(packed: str, size: int) -> np.ndarray:
    """The ``size`` flags that :func:`pack` packed, as a boolean array.

    Raises:
      ValueError: if ``packed`` holds fewer than ``size`` bits, or more than ``size`` rounded
        up to whole bytes.
    """
    data = np.frombuffer(bytes.fromhex(packed), dtype=np.uint8)
    if len(data) != (size + 7) // 8:
        raise ValueError(f"{len(data) * 8} packed bits cannot hold the flags of {size} words")
    return np.unpackbits(data)[:size].astype(bool)


def wer_difference(
    first: Sequence[np.ndarray],
    second: Sequence[np.ndarray],
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    r"""The difference of two systems' word error rates, each the mean over its seeds, and its
    paired-bootstrap interval over the test words.

    With :math:`a_{s,i} = 1` when seed :math:`s` of the first system gets word :math:`i` wrong
    (:math:`b_{s,i}` for the second) and :math:`N` words,

    .. math::

        d_i = \frac{1}{|S_a|} \sum_{s} a_{s,i} - \frac{1}{|S_b|} \sum_{s} b_{s,i}, \qquad
        \Delta = \frac{100}{N} \sum_i d_i

    in points (negative: the first system is better). Each resample draws :math:`N` words
    with replacement, the same for every seed of both systems (``c_i`` times word :math:`i`),
    and gives :math:`\Delta^* = \frac{100}{N} \sum_i c_i d_i`; the interval holds the central
    ``confidence`` of the :math:`\Delta^*`. It measures how much :math:`\Delta` depends on
    which words were drawn for the test set, not on the training seeds.

    Args:
      first: Per seed of the first system, which words it got wrong.
      second: The same for the second system, on the same words.
      resamples: Bootstrap resamples.
      confidence: The interval's coverage.
      seed: The resampling's random seed.

    Returns:
      ``(delta, low, high)`` in points.
    """
    a = np.mean(np.asarray(first, dtype=np.float64), axis=0)
    b = np.mean(np.asarray(second, dtype=np.float64), axis=0)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"the two systems must be scored on the same words, got {a.shape} and {b.shape}")
    differences = a - b
    size = len(differences)
    counts = np.random.default_rng(seed).multinomial(size, np.full(size, 1.0 / size), size=resamples)
    resampled = 100.0 * (counts @ differences) / size
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(resampled, [tail, 100.0 - tail])
    return 100.0 * float(differences.mean()), float(low), float(high)
