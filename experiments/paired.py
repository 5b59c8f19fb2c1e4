"""Paired comparison of systems scored on the same test words: which words each got wrong,
kept compactly, a bootstrap interval for the difference of their word error rates, and a
Student-t interval for the mean of differences measured on several training seeds.

The resampling is the paired bootstrap of Koehn, "Statistical significance tests for machine
translation evaluation" (EMNLP 2004): the same test items drawn for both systems; the interval
is the bootstrap percentile interval (Efron and Tibshirani, "An Introduction to the Bootstrap",
1993).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 10000
"""Bootstrap resamples: at 5,000 words the ends of a 95% interval vary by about 0.01 points
(standard deviation) with the seed of the resampling."""
CONFIDENCE = 0.95
"""The coverage of the intervals."""
_CHUNK = 500
"""Resamples drawn at once (a ``_CHUNK`` x words index array)."""


def pack(wrong: Sequence[bool]) -> str:
    """Which words are wrong, as a hexadecimal string: one bit a word, the first word in the
    highest bit of the first byte, the last byte padded with zero bits."""
    return np.packbits(np.asarray(wrong, dtype=bool)).tobytes().hex()


def unpack(packed: str, size: int) -> np.ndarray:
    """The ``size`` flags that :func:`pack` packed, as a boolean array.

    Raises:
      ValueError: if ``packed`` is not ``size`` flags packed: another number of bytes, or
        padding bits that are not zero.
    """
    data = np.frombuffer(bytes.fromhex(packed), dtype=np.uint8)
    expected = (size + 7) // 8
    bits = np.unpackbits(data)
    if len(data) != expected or bits[size:].any():
        raise ValueError(f"the packed flags do not hold {size} words: {len(data)} bytes, expected {expected} "
                         "with zero padding bits")
    return bits[:size].astype(bool)


def wer_difference(
    first: Sequence[np.ndarray],
    second: Sequence[np.ndarray],
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
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
    with replacement, the same for every seed of both systems, and gives
    :math:`\Delta^* = \frac{100}{N} \sum_{j=1}^{N} d_{i_j}`; the interval holds the central
    ``confidence`` of the :math:`\Delta^*`. It measures how much :math:`\Delta` depends on
    which words were drawn for the test set, for these trained models: not how much it
    depends on the training seeds.

    Args:
      first: Per seed of the first system, which words it got wrong.
      second: The same for the second system, on the same words.
      resamples: Bootstrap resamples, > 0.
      confidence: The interval's coverage, in (0, 1).
      seed: The resampling's random seed.

    Returns:
      ``(delta, low, high)`` in points.

    Raises:
      ValueError: if the systems are not scored on the same words (or a system's seeds not
        on as many words), if a system has no seed, or for ``resamples`` or ``confidence``
        out of range.
    """
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"resamples must be > 0 and confidence in (0, 1), got {resamples} and {confidence}")
    sizes = [{len(flags) for flags in system} for system in (first, second)]
    if any(len(size) != 1 for size in sizes) or sizes[0] != sizes[1] or not sizes[0] - {0}:
        raise ValueError(f"the two systems must be scored on the same words, every seed on all of them; "
                         f"got words per seed {[sorted(size) for size in sizes]}")
    differences = np.mean(np.asarray(first, dtype=np.float64), axis=0) - np.mean(
        np.asarray(second, dtype=np.float64), axis=0)
    size = len(differences)
    rng = np.random.default_rng(seed)
    resampled = np.concatenate([
        differences[rng.integers(0, size, size=(min(_CHUNK, resamples - start), size))].mean(axis=1)
        for start in range(0, resamples, _CHUNK)
    ])
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = 100.0 * np.percentile(resampled, [tail, 100.0 - tail])
    return 100.0 * float(differences.mean()), float(low), float(high)


_T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
          2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
          2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
"""Student's t quantile at 0.975 for 1 to 30 degrees of freedom (the standard table)."""
_Z_975 = 1.959964
"""The standard normal quantile at 0.975."""


def t_975(df: int) -> float:
    r"""Student's t quantile at 0.975 for ``df`` degrees of freedom: the table up to 30, then
    the Cornish-Fisher expansion around the normal quantile :math:`z` (within 1e-5 of the exact
    quantile from 31 on):

    .. math::

        t \approx z + \frac{z^3 + z}{4\nu} + \frac{5z^5 + 16z^3 + 3z}{96\nu^2}
            + \frac{3z^7 + 19z^5 + 17z^3 - 15z}{384\nu^3}
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T_975):
        return _T_975[df - 1]
    z = _Z_975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def seed_interval(by_seed: Sequence[float]) -> tuple[float, float] | None:
    """The 95% Student-t interval of the mean of differences measured on several seeds (one
    training run each): mean ± t(0.975, n - 1) · s / √n, s the sample standard deviation
    (:func:`t_975`). It says how much a difference depends on the training run, which the
    bootstrap over the test words does not; ``None`` for fewer than 2 seeds.
    """
    n = len(by_seed)
    if n < 2:
        return None
    mean, spread = float(np.mean(by_seed)), float(np.std(by_seed, ddof=1))
    half = t_975(n - 1) * spread / np.sqrt(n)
    return mean - half, mean + half
