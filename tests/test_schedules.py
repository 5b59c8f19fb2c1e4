"""Schedules against formulas written independently in numpy (tests/reference.py)."""

from __future__ import annotations

import functools

import numpy as np
import opennmt
import pytest
import tensorflow as tf

import reference as ref
from onmt_trainkit import config, schedules
from onmt_trainkit.errors import ConfigError

RTOL = 2e-6
ATOL = 1e-9  # float32 rounding of rates near 0 (1e-6 of a 1e-3 peak)


def values(schedule, steps):
    return np.array([float(schedule(tf.constant(s, tf.int64))) for s in steps])


# ---- NoamDecay ------------------------------------------------------------------------

NOAM_BOUNDARIES = [0, 1, 3999, 4000, 4001, 100000, 10**7]


@pytest.mark.parametrize("scale,model_dim,warmup", [(2.0, 512, 4000), (0.6, 128, 400), (1, 4, 8000)])
def test_noam_matches_formula(scale, model_dim, warmup):
    steps = sorted(set(NOAM_BOUNDARIES + [warmup - 1, warmup, warmup + 1] + list(range(0, 20000, 97))))
    schedule = schedules.NoamDecay(scale, model_dim, warmup)
    np.testing.assert_allclose(
        schedules.evaluate(schedule, steps), ref.noam(steps, scale, model_dim, warmup), rtol=RTOL
    )


def test_noam_peak_is_at_the_end_of_warmup():
    schedule = schedules.NoamDecay(2.0, 512, 8000)
    curve = schedules.evaluate(schedule, np.arange(20000))
    assert int(np.argmax(curve)) == 7999  # t = step + 1 = warmup_steps
    assert curve.max() == pytest.approx(2.0 * 512**-0.5 * 8000**-0.5, rel=RTOL)


def test_noam_identical_to_opennmt():
    steps = tf.range(0, 50000, dtype=tf.int64)
    for args in [(2.0, 512, 8000), (0.6, 128, 400), (1.0, 768, 10000)]:
        ours = schedules.NoamDecay(*args)(steps).numpy()
        stock = opennmt.schedules.NoamDecay(*args)(steps).numpy()
        np.testing.assert_array_equal(ours, stock)


def test_noam_is_opennmt_noam():
    """Code that checks for OpenNMT-tf's class (its own tests, users') accepts the plugin's."""
    assert issubclass(schedules.NoamDecay, opennmt.schedules.NoamDecay)
    assert opennmt.schedules.NoamDecay.__module__ == "opennmt.schedules.lr_schedules"  # not replaced
    ours = schedules.NoamDecay(2.0, 512, 4000)
    assert isinstance(ours, opennmt.schedules.NoamDecay)
    assert isinstance(ours, tf.keras.optimizers.schedules.LearningRateSchedule)
    # What OpenNMT-tf builds for decay_type NoamDecay while the plugin is active: the plugin's,
    # with its checked arguments kept as given, and an instance of OpenNMT-tf's class.
    wrapper = opennmt.schedules.make_learning_rate_schedule(2.0, "NoamDecay", dict(model_dim=512, warmup_steps=4000))
    assert type(wrapper.schedule) is schedules.NoamDecay
    assert isinstance(wrapper.schedule, opennmt.schedules.NoamDecay)
    assert (wrapper.schedule.scale, wrapper.schedule.model_dim, wrapper.schedule.warmup_steps) == (2.0, 512, 4000)
    assert wrapper.schedule.get_config() == {"scale": 2.0, "model_dim": 512, "warmup_steps": 4000}
    assert isinstance(config.learning_rate_schedule(
        {"learning_rate": 2.0, "decay_type": "NoamDecay", "decay_params": {"model_dim": 512, "warmup_steps": 4000}}
    ).schedule, opennmt.schedules.NoamDecay)
    steps = [0, 1, 3999, 4000, 4001, 10**6]
    np.testing.assert_allclose(values(wrapper, steps), ref.noam(steps, 2.0, 512, 4000), rtol=RTOL)


@pytest.mark.parametrize(
    "args,message",
    [
        ((0, 512, 4000), "scale must be a number > 0, got 0"),
        ((2.0, -1, 4000), "model_dim must be a number > 0, got -1"),
        ((2.0, 512, 0), "warmup_steps must be a number > 0, got 0"),
        ((2.0, "512", 4000), "model_dim must be a number > 0, got '512'"),
    ],
)
def test_noam_validation(args, message):
    with pytest.raises(ConfigError, match=message):
        schedules.NoamDecay(*args)


def test_worked_example_first_logged_rate():
    """model_dim 4, learning_rate 2, warmup 8000, floor 1e-4: step 1 logs 0.000100."""
    schedule = config.learning_rate_schedule(
        {"learning_rate": 2, "decay_type": "NoamDecay",
         "decay_params": {"model_dim": 4, "warmup_steps": 8000}, "minimum_learning_rate": 0.0001}
    )
    raw = ref.noam(1, 2, 4, 8000)
    assert raw == pytest.approx(2 * 0.5 * 2 * 8000**-1.5)  # 2.795e-6, under the floor
    assert f"{float(schedule(1)):f}" == "0.000100"
    # The floor holds until Noam rises above it: t * 8000^-1.5 > 1e-4 from t = 72.
    assert float(schedule(70)) == pytest.approx(1e-4)
    assert float(schedule(71)) == pytest.approx(72 * 8000**-1.5, rel=RTOL)
    assert float(schedule(80000)) == pytest.approx(ref.noam(80000, 2, 4, 8000), rel=RTOL)


# ---- ScheduleWrapper ------------------------------------------------------------------

KERAS = tf.keras.optimizers.schedules
INNER = [
    (KERAS.PolynomialDecay(1e-3, 1000, end_learning_rate=0.0, power=1.0),
     functools.partial(ref.polynomial, initial=1e-3, decay_steps=1000, end=0.0, power=1.0)),
    (KERAS.ExponentialDecay(1e-3, 300, 0.5, staircase=True),
     functools.partial(ref.exponential, initial=1e-3, decay_steps=300, rate=0.5, staircase=True)),
    (schedules.NoamDecay(2.0, 256, 400), functools.partial(ref.noam, scale=2.0, model_dim=256, warmup_steps=400)),
]


@pytest.mark.parametrize("inner,reference", INNER)
@pytest.mark.parametrize("start,duration,floor", [(0, 1, 0.0), (50, 3, 2e-4), (7, 10, 0.0)])
def test_wrapper_without_warmup_is_opennmt_wrapper(inner, reference, start, duration, floor):
    steps = np.arange(0, 3000, 7)
    ours = schedules.ScheduleWrapper(inner, step_start=start, step_duration=duration,
                                     minimum_learning_rate=floor)
    stock = opennmt.schedules.ScheduleWrapper(inner, step_start=start, step_duration=duration,
                                              minimum_learning_rate=floor)
    np.testing.assert_array_equal(
        ours(tf.constant(steps)).numpy(), stock(tf.constant(steps)).numpy()
    )
    np.testing.assert_allclose(
        schedules.evaluate(ours, steps),
        ref.wrapped(reference, steps, start=start, duration=duration, floor=floor),
        rtol=RTOL, atol=ATOL,
    )


@pytest.mark.parametrize("inner,reference", INNER)
@pytest.mark.parametrize("warmup,warmup_rate,start,duration,floor",
                         [(100, 0.0, 0, 1, 0.0), (100, 1e-5, 20, 2, 1e-4), (1, 0.0, 0, 1, 0.0)])
def test_wrapper_with_warmup(inner, reference, warmup, warmup_rate, start, duration, floor):
    end = warmup + start + duration * 1000
    steps = sorted({0, 1, warmup - 1, warmup, warmup + 1, warmup + start, warmup + start + 1,
                    end - 1, end, end + 1, 10 * end} | set(range(0, end + 200, 13)))
    wrapper = schedules.ScheduleWrapper(inner, step_start=start, step_duration=duration,
                                        minimum_learning_rate=floor, warmup_steps=warmup,
                                        warmup_learning_rate=warmup_rate)
    expected = ref.wrapped(reference, steps, warmup, warmup_rate, start, duration, floor)
    np.testing.assert_allclose(schedules.evaluate(wrapper, steps), expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(values(wrapper, steps), expected, rtol=RTOL, atol=ATOL)


def test_wrapper_warmup_hand_computed():
    # Warmup 4 steps from 1e-4 to S(0) = 1e-3, then linear decay over 10 steps to 0.
    inner = KERAS.PolynomialDecay(1e-3, 10, end_learning_rate=0.0)
    wrapper = schedules.ScheduleWrapper(inner, warmup_steps=4, warmup_learning_rate=1e-4)
    expected = [1e-4, 3.25e-4, 5.5e-4, 7.75e-4, 1e-3, 9e-4, 8e-4]
    np.testing.assert_allclose(values(wrapper, range(7)), expected, rtol=1e-6)
    assert values(wrapper, [14, 15, 100]).tolist() == [0.0, 0.0, 0.0]


# ---- WarmupStableDecay ----------------------------------------------------------------

@pytest.mark.parametrize("shape", schedules.DECAY_SHAPES)
def test_warmup_stable_decay(shape):
    schedule = schedules.WarmupStableDecay(1e-3, total_steps=1000, decay_steps=200,
                                           decay_shape=shape, end_learning_rate=1e-5)
    steps = [0, 1, 799, 800, 801, 900, 999, 1000, 1001, 5000] + list(range(0, 1100, 11))
    np.testing.assert_allclose(
        schedules.evaluate(schedule, steps),
        ref.stable_decay(steps, 1e-3, 1000, 200, shape, 1e-5),
        rtol=RTOL,
    )


def test_warmup_stable_decay_hand_computed():
    linear = schedules.WarmupStableDecay(1.0, total_steps=10, decay_steps=4, decay_shape="linear")
    assert values(linear, [5, 6, 7, 8, 10, 11]).tolist() == pytest.approx([1, 1, 0.75, 0.5, 0, 0])
    sqrt = schedules.WarmupStableDecay(1.0, total_steps=10, decay_steps=4, decay_shape="1-sqrt")
    assert float(sqrt(7)) == pytest.approx(0.5)  # p = 1/4, 1 - sqrt(1/4)
    cosine = schedules.WarmupStableDecay(1.0, total_steps=10, decay_steps=4, decay_shape="cosine")
    assert float(cosine(8)) == pytest.approx(0.5)  # p = 1/2


@pytest.mark.parametrize("total,fraction,decay", [
    (96000, 0.2, 19200), (10, 0.25, 3), (10, 0.35, 4), (10, 0.01, 1), (7, 1.0, 7), (1, 0.5, 1),
])
def test_warmup_stable_decay_fraction_is_the_share_of_total_steps(total, fraction, decay):
    # D = max(1, floor(f T + 1/2)), by hand: 0.25 * 10 = 2.5 -> 3, 0.35 * 10 = 3.5 -> 4, 0.1 -> 1.
    by_fraction = schedules.WarmupStableDecay(1.0, total_steps=total, decay_fraction=fraction, decay_shape="linear")
    assert by_fraction.decay_steps == decay
    steps = sorted({0, total - decay - 1, total - decay, total - decay + 1, total - 1, total, total + 1})
    np.testing.assert_allclose(values(by_fraction, steps),
                               ref.stable_decay(steps, 1.0, total, decay, "linear"), rtol=RTOL, atol=1e-7)


def test_warmup_stable_decay_fraction_round_trips_as_a_fraction():
    schedule = schedules.WarmupStableDecay(1e-3, total_steps=500, decay_fraction=0.2)
    assert schedule.get_config() == {"learning_rate": 1e-3, "total_steps": 500, "decay_fraction": 0.2,
                                     "decay_shape": "1-sqrt", "end_learning_rate": 0.0}
    assert schedules.WarmupStableDecay.from_config(schedule.get_config()).decay_steps == 100


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(total_steps=10), r"^decay_steps or decay_fraction is required by WarmupStableDecay"),
        (dict(total_steps=10, decay_steps=2, decay_fraction=0.2),
         r"^decay_steps \(2\) and decay_fraction \(0.2\) are both set; give one"),
        (dict(total_steps=10, decay_fraction=0), r"^decay_fraction must be a number > 0 and <= 1, got 0$"),
        (dict(total_steps=10, decay_fraction=1.5), r"^decay_fraction must be a number > 0 and <= 1, got 1.5$"),
        (dict(total_steps=0, decay_steps=1), "total_steps must be an integer > 0, got 0"),
        (dict(total_steps=10, decay_steps=11), "decay_steps must be an integer > 0 and <= 10, got 11"),
        (dict(total_steps=10, decay_steps=2, decay_shape="sqrt"), "did you mean '1-sqrt'"),
        (dict(total_steps=10, decay_steps=2, end_learning_rate=2.0), "end_learning_rate must be"),
    ],
)
def test_warmup_stable_decay_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        schedules.WarmupStableDecay(1.0, **kwargs)


# ---- Shared properties ----------------------------------------------------------------

ALL = [
    schedules.NoamDecay(2.0, 512, 4000),
    schedules.Constant(3e-4),
    schedules.WarmupStableDecay(1e-3, 1000, 100, "cosine", 1e-5),
    schedules.ScheduleWrapper(KERAS.CosineDecay(1e-3, 500, alpha=0.1), step_start=3,
                              step_duration=2, minimum_learning_rate=1e-5, warmup_steps=50,
                              warmup_learning_rate=1e-6),
    schedules.ScheduleWrapper(schedules.NoamDecay(1.0, 64, 10), warmup_steps=5),
]


@pytest.mark.parametrize("schedule", ALL, ids=lambda s: type(s).__name__)
def test_config_round_trip(schedule):
    config_dict = tf.keras.optimizers.schedules.serialize(schedule)
    restored = tf.keras.optimizers.schedules.deserialize(config_dict)
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    steps = np.arange(0, 3000, 17)
    np.testing.assert_array_equal(schedules.evaluate(restored, steps), schedules.evaluate(schedule, steps))


@pytest.mark.parametrize(
    "schedule",
    [
        KERAS.PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1]),
        KERAS.CosineDecay(0.0, 100, warmup_target=1e-3, warmup_steps=10),
        opennmt.schedules.InvSqrtDecay(1e-3, 10),
        schedules.ScheduleWrapper(KERAS.PiecewiseConstantDecay([10], [1.0, 0.5]), warmup_steps=5),
    ],
    ids=lambda s: type(s).__name__,
)
def test_evaluate_vectorises_branching_schedules(schedule):
    steps = np.arange(0, 130)
    np.testing.assert_allclose(schedules.evaluate(schedule, steps), values(schedule, steps), rtol=RTOL, atol=ATOL)


def test_evaluate_a_million_steps():
    wrapper = schedules.ScheduleWrapper(schedules.NoamDecay(2.0, 512, 8000), warmup_steps=100)
    curve = schedules.evaluate(wrapper, np.arange(1_000_001))
    assert curve.shape == (1_000_001,)
    np.testing.assert_allclose(
        curve[[10**6]], ref.wrapped(functools.partial(ref.noam, scale=2.0, model_dim=512,
                                                      warmup_steps=8000), [10**6], 100),
        rtol=RTOL,
    )
