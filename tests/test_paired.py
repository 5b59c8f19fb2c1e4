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


def test_unpack_refuses_the_wrong_size():
    with pytest.raises(ValueError, match="16 packed bits cannot hold the flags of 20 words"):
        paired.unpack("ffff", 20)
    with pytest.raises(ValueError, match="16 packed bits cannot hold the flags of 8 words"):
        paired.unpack("ffff", 8)


def test_identical_and_opposite_systems():
    words = np.array([1, 0, 1, 1, 0], dtype=bool)
    assert paired.wer_difference([words], [words]) == (0.0, 0.0, 0.0)
    assert paired.wer_difference([np.ones(5, bool)], [np.zeros(5, bool)]) == (100.0, 100.0, 100.0)


def test_difference_of_the_means_over_seeds_by_hand():
    # First system: seeds get words 0 and 1 wrong, then word 0: per word 1, 0.5, 0, 0 (WER 37.5).
    # Second: its one seed gets word 3 wrong (WER 25). Difference 12.5 points.
    first = [np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool)]
    second = [np.array([0, 0, 0, 1], bool)]
    delta, low, high = paired.wer_difference(first, second, resamples=2000)
    assert delta == pytest.approx(12.5)
    # Per word d = (1, 0.5, 0, -1): a resample's mean lies within [-100, 100] and on 12.5's side.
    assert -100 <= low < delta < high <= 100


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


def test_systems_on_other_words_are_refused():
    with pytest.raises(ValueError, match=r"the same words, got \(4,\) and \(5,\)"):
        paired.wer_difference([np.zeros(4, bool)], [np.zeros(5, bool)])
