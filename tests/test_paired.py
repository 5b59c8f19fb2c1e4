"""The paired comparison of systems scored on the same words (experiments.paired), against
hand-computed values and the normal approximation of the bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import paired


@pytest.mark.parametrize("flags, packed", [
    ([True], "80"),
    ([False, True, False, False, False, False, False, True], "41"),
    ([True] * 9, "ff80"),
    ([False] * 12 + [True], "0008"),
])
def test_pack_by_hand(flags, packed):
    assert paired.pack(flags) == packed
    assert paired.unpack(packed, len(flags)).tolist() == flags


@pytest.mark.parametrize("packed, size, found, expected", [("ffff", 20, 2, 3), ("ffff", 8, 2, 1), ("ff", 4, 1, 1)])
def test_unpack_refuses_what_is_not_size_flags(packed, size, found, expected):
    with pytest.raises(ValueError, match=f"the packed flags do not hold {size} words: {found} bytes, expected "
                                         f"{expected} with zero padding bits"):
        paired.unpack(packed, size)


def test_identical_and_opposite_systems():
    words = np.array([1, 0, 1, 1, 0], dtype=bool)
    assert paired.wer_difference([words], [words]) == (0.0, 0.0, 0.0)
    assert paired.wer_difference([np.ones(5, bool)], [np.zeros(5, bool)]) == (100.0, 100.0, 100.0)


def test_difference_of_the_means_over_seeds_by_hand():
    # First system: seeds get words 0 and 1 wrong, then word 0: per word 1, 0.5, 0, 0 (WER 37.5).
    # Second: its one seed gets word 3 wrong (WER 25). Difference 12.5 points.
    first = [np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool)]
    second = [np.array([0, 0, 0, 1], bool)]
    assert paired.wer_difference(first, second)[0] == pytest.approx(12.5)


def test_the_interval_of_two_words_by_hand():
    # Per word d = (1, 0): a resample draws word 0 twice (probability 1/4, 100 points), once
    # (1/2, 50 points) or never (1/4, 0 points), so the central 95% runs from 0 to 100; the
    # central 40% (30th to 70th percentile) is 50 alone.
    first, second = [np.array([1, 0], bool)], [np.array([0, 0], bool)]
    assert paired.wer_difference(first, second) == (50.0, 0.0, 100.0)
    assert paired.wer_difference(first, second, confidence=0.4) == (50.0, 50.0, 50.0)


def test_interval_matches_the_normal_approximation():
    # 5,000 words, two correlated systems: the bootstrap's 95% interval is close to
    # delta +- 1.96 * 100 * sd(d) / sqrt(N) (sd of the per-word differences).
    rng = np.random.default_rng(7)
    shared = rng.random(5000) < 0.35
    first = [shared ^ (rng.random(5000) < 0.08) for _ in range(3)]
    second = [shared ^ (rng.random(5000) < 0.05) for _ in range(3)]
    d = np.mean(first, axis=0) - np.mean(second, axis=0)
    half = 1.96 * 100 * d.std() / np.sqrt(len(d))
    delta, low, high = paired.wer_difference(first, second, resamples=4000)
    assert delta == pytest.approx(100 * d.mean())
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert (low + high) / 2 == pytest.approx(delta, abs=0.1 * half)


@pytest.mark.parametrize("first, second, sizes", [
    ([np.zeros(4, bool)], [np.zeros(5, bool)], r"\[\[4\], \[5\]\]"),
    ([np.zeros(4, bool), np.zeros(3, bool)], [np.zeros(4, bool)], r"\[\[3, 4\], \[4\]\]"),
    ([], [np.zeros(4, bool)], r"\[\[\], \[4\]\]"),
    ([np.zeros(0, bool)], [np.zeros(0, bool)], r"\[\[0\], \[0\]\]"),
])
def test_systems_on_other_words_are_refused(first, second, sizes):
    with pytest.raises(ValueError, match=r"the two systems must be scored on the same words, every seed on all of "
                                         r"them; got words per seed " + sizes):
        paired.wer_difference(first, second)


@pytest.mark.parametrize("resamples, confidence", [(0, 0.95), (100, 0.0), (100, 1.0)])
def test_bad_resampling_settings_are_refused(resamples, confidence):
    with pytest.raises(ValueError, match=f"resamples must be > 0 and confidence in \\(0, 1\\), got {resamples} "
                                         f"and {confidence}"):
        paired.wer_difference([np.zeros(4, bool)], [np.zeros(4, bool)], resamples=resamples, confidence=confidence)


def test_the_seed_interval_by_hand():
    # Two seeds, differences 1 and 3: mean 2, s = sqrt(2), s / sqrt(2) = 1, t(0.975, 1) = 12.7062.
    assert paired.seed_interval([1.0, 3.0]) == pytest.approx((2 - 12.7062, 2 + 12.7062))
    # Three: -0.92, -1.06, -0.40; mean -0.793333, s^2 = (0.126667^2 + 0.266667^2 + 0.393333^2) / 2
    # = 0.120933, s / sqrt(3) = 0.200776, t(0.975, 2) = 4.3027: -0.793333 -/+ 0.863880.
    assert paired.seed_interval([-0.92, -1.06, -0.40]) == pytest.approx((-1.657213, 0.070547), abs=1e-5)
    assert paired.seed_interval([0.5]) is None
    # Twelve seeds, 0 and 1 alternating: mean 0.5, s^2 = 12 * 0.25 / 11, s / sqrt(12) = 0.150756,
    # t(0.975, 11) = 2.2010 (the table): 0.5 -/+ 0.331814.
    assert paired.seed_interval([0.0, 1.0] * 6) == pytest.approx((0.168186, 0.831814), abs=1e-4)


@pytest.mark.parametrize("df, expected", [(1, 12.7062), (10, 2.2281), (11, 2.2010), (15, 2.1314), (20, 2.0860),
                                          (30, 2.0423), (31, 2.0395), (40, 2.0211), (60, 2.0003), (120, 1.9799), (10**6, 1.9600)])
def test_t_quantile_follows_the_standard_table(df, expected):
    assert paired.t_975(df) == pytest.approx(expected, abs=1e-4)
