"""The YAML keys: schedules built from ``params``, validation messages, the shipped recipes."""

from __future__ import annotations

import functools
import glob
import os

import numpy as np
import pytest
import tensorflow as tf
import yaml

import reference as ref
from conftest import ROOT
from onmt_trainkit import config, schedules
from onmt_trainkit.errors import ConfigError

RTOL, ATOL = 2e-6, 1e-9


def curve(params, steps, max_step=None):
    return schedules.evaluate(config.learning_rate_schedule(params, max_step=max_step), steps)


def test_no_decay_type_is_a_constant_as_in_opennmt():
    assert config.learning_rate_schedule({"learning_rate": 1e-3}) is None


def test_warmup_without_decay_type_then_constant():
    params = {"learning_rate": 1e-3, "warmup_steps": 10, "warmup_learning_rate": 1e-4}
    np.testing.assert_allclose(curve(params, [0, 5, 9, 10, 11, 10**6]),
                               [1e-4, 5.5e-4, 9.1e-4, 1e-3, 1e-3, 1e-3], rtol=RTOL)


def test_learning_rate_is_the_first_schedule_argument_unless_given():
    params = {"learning_rate": 2.0, "decay_type": "NoamDecay",
              "decay_params": {"model_dim": 512, "warmup_steps": 4000}}
    assert config.learning_rate_schedule(params).schedule.scale == 2.0
    params["decay_params"]["scale"] = 1.0
    assert config.learning_rate_schedule(params).schedule.scale == 1.0
    assert params["decay_params"] == {"model_dim": 512, "warmup_steps": 4000, "scale": 1.0}


def test_max_step_is_what_remains_after_warmup_and_delay():
    params = {"learning_rate": 1.0, "warmup_steps": 10, "start_decay_steps": 5,
              "decay_step_duration": 2, "decay_type": "PolynomialDecay",
              "decay_params": {"decay_steps": "max_step", "end_learning_rate": 0.0}}
    schedule = config.learning_rate_schedule(params, max_step=100)
    assert schedule.schedule.decay_steps == (100 - 10 - 5) // 2 == 42
    steps = [0, 9, 10, 15, 16, 98, 99, 100, 101, 1000]
    expected = ref.wrapped(functools.partial(ref.polynomial, initial=1.0, decay_steps=42, end=0.0),
                           steps, warmup=10, start=5, duration=2)
    np.testing.assert_allclose(schedules.evaluate(schedule, steps), expected, rtol=RTOL, atol=ATOL)
    last_step_of_decay = 10 + 5 + 2 * 41  # schedule step 41 of 42
    assert schedules.evaluate(schedule, [last_step_of_decay + 1])[0] > 0
    assert schedules.evaluate(schedule, [100])[0] == 0
    assert params["decay_params"]["decay_steps"] == "max_step"  # the user's config is not modified


KERAS_CASES = {
    "PolynomialDecay": ({"decay_steps": 1000, "end_learning_rate": 1e-5, "power": 2.0},
                        lambda s: ref.polynomial(s, 1e-3, 1000, end=1e-5, power=2.0)),
    "CosineDecay": ({"decay_steps": 1000, "alpha": 0.1}, lambda s: ref.cosine(s, 1e-3, 1000, alpha=0.1)),
    "CosineDecayRestarts": ({"first_decay_steps": 300, "t_mul": 2.0, "m_mul": 0.5, "alpha": 0.05},
                            lambda s: ref.cosine_restarts(s, 1e-3, 300, 2.0, 0.5, 0.05)),
    "ExponentialDecay": ({"decay_steps": 250, "decay_rate": 0.3}, lambda s: ref.exponential(s, 1e-3, 250, 0.3)),
    "InverseTimeDecay": ({"decay_steps": 100, "decay_rate": 0.5}, lambda s: ref.inverse_time(s, 1e-3, 100, 0.5)),
    "PiecewiseConstantDecay": ({"boundaries": [300, 800], "values": [1e-3, 5e-4, 1e-4]},
                               lambda s: ref.piecewise(s, [300, 800], [1e-3, 5e-4, 1e-4])),
}


@pytest.mark.parametrize("name", sorted(KERAS_CASES))
def test_every_keras_schedule_works_behind_a_warmup(name):
    decay_params, reference = KERAS_CASES[name]
    params = {"learning_rate": 1e-3, "decay_type": name, "decay_params": decay_params,
              "warmup_steps": 50, "warmup_learning_rate": 1e-5}
    steps = sorted({0, 1, 49, 50, 51, 299, 300, 301, 799, 800, 801, 1049, 1050, 1051, 5000}
                   | set(range(0, 2000, 7)))
    expected = ref.wrapped(reference, steps, warmup=50, warmup_rate=1e-5)
    np.testing.assert_allclose(curve(params, steps), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "params,max_step,message",
    [
        ({"learning_rate": -1}, None, "params.learning_rate must be a number >= 0, got -1"),
        ({"learning_rate": "fast"}, None, "params.learning_rate must be a number >= 0, got 'fast'"),
        ({}, None, "params.learning_rate is required when no decay_type is set"),
        ({"learning_rate": 1, "warmup_steps": -5}, None, "params.warmup_steps must be an integer >= 0, got -5"),
        ({"learning_rate": 1, "warmup_steps": 1.5}, None, "params.warmup_steps must be an integer >= 0, got 1.5"),
        ({"learning_rate": 1, "warmup_learning_rate": -1, "warmup_steps": 3}, None,
         "params.warmup_learning_rate must be a number >= 0, got -1"),
        ({"learning_rate": 1, "decay_step_duration": 0, "decay_type": "NoamDecay"}, None,
         "params.decay_step_duration must be an integer >= 1, got 0"),
        ({"learning_rate": 1, "start_decay_steps": -1}, None, "params.start_decay_steps must be an integer >= 0, got -1"),
        ({"learning_rate": 1, "minimum_learning_rate": -1e-5}, None,
         "params.minimum_learning_rate must be a number >= 0, got -1e-05"),
        ({"learning_rate": 1, "decay_type": "NoamDecy"}, None,
         r"params.decay_type: unknown value 'NoamDecy' \(did you mean 'NoamDecay'\?\); valid values are: .*CosineDecay.*WarmupStableDecay"),
        ({"learning_rate": 1, "decay_type": 3}, None, "params.decay_type must be a schedule name"),
        ({"learning_rate": 1, "decay_type": "NoamDecay", "decay_params": [1, 2]}, None,
         "params.decay_params must be a mapping"),
        ({"learning_rate": 1, "decay_type": "NoamDecay", "decay_params": {"model_dim": 8, "warmup_step": 4}}, None,
         r"params.decay_params: unknown value 'warmup_step' \(did you mean 'warmup_steps'\?\); valid values are: model_dim, scale, warmup_steps"),
        ({"learning_rate": 1, "decay_type": "NoamDecay", "decay_params": {"model_dim": 8}}, None,
         "decay_params.warmup_steps is required by NoamDecay"),
        ({"decay_type": "NoamDecay", "decay_params": {"model_dim": 8, "warmup_steps": 4}}, None,
         "params.learning_rate or decay_params.scale is required by NoamDecay"),
        ({"learning_rate": 1, "decay_type": "NoamDecay", "decay_params": {"model_dim": 8, "warmup_steps": 0}}, None,
         "decay_params.warmup_steps must be a number > 0, got 0"),
        ({"learning_rate": 1, "decay_type": "PolynomialDecay", "decay_params": {"decay_steps": 0}}, None,
         "decay_params.decay_steps must be an integer > 0, got 0"),
        ({"learning_rate": 1, "decay_type": "CosineDecay", "decay_params": {"decay_steps": 10, "alpha": 2}}, None,
         "decay_params.alpha must be a number >= 0 and <= 1, got 2"),
        ({"learning_rate": 1, "decay_type": "ExponentialDecay", "decay_params": {"decay_steps": 10, "decay_rate": 0}}, None,
         "decay_params.decay_rate must be a number > 0, got 0"),
        ({"decay_type": "PiecewiseConstantDecay", "decay_params": {"boundaries": [10, 5], "values": [1, 2, 3]}}, None,
         r"decay_params.boundaries must be strictly increasing, got \[10, 5\]"),
        ({"decay_type": "PiecewiseConstantDecay", "decay_params": {"boundaries": [10], "values": [1]}}, None,
         r"decay_params.values must be a list of 2 rates \(one more than boundaries\), got \[1\]"),
        ({"learning_rate": 1, "decay_type": "PolynomialDecay", "decay_params": {"decay_steps": "max_step"}}, None,
         "decay_params.decay_steps is 'max_step' but train.max_step is not set"),
        ({"learning_rate": 1, "warmup_steps": 100, "decay_type": "PolynomialDecay",
          "decay_params": {"decay_steps": "max_step"}}, 100,
         r"no step is left to decay: \(train.max_step 100 - params.warmup_steps 100 - params.start_decay_steps 0\)"),
        ({"learning_rate": 1, "decay_type": "ExponentialDecay",
          "decay_params": {"decay_steps": 10, "decay_rate": "max_step"}}, 100,
         "decay_params.decay_rate must be a number \\('max_step' is accepted only for"),
        ({"learning_rate": 1, "decay_type": "WarmupStableDecay",
          "decay_params": {"total_steps": "max_step", "decay_steps": 500}}, 100,
         "decay_params.decay_steps must be an integer > 0 and <= 100, got 500"),
    ],
)
def test_bad_params_name_the_key_the_value_and_what_is_allowed(params, max_step, message):
    with pytest.raises(ConfigError, match=message):
        config.learning_rate_schedule(params, max_step=max_step)


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, "0.99", None, True])
def test_bad_moving_average_decay(value):
    with pytest.raises(ConfigError, match=f"train.moving_average_decay must be a number > 0 and < 1, got {value!r}"):
        config.moving_average_decay(value)


def test_opennmt_and_user_registered_schedules_resolve():
    assert config.schedule_class("InvSqrtDecay").__module__.startswith("opennmt")
    assert config.schedule_class("PolynomialDecay").__module__.startswith("keras")
    assert config.schedule_class("NoamDecay") is schedules.NoamDecay
    assert "RsqrtDecay" in config.schedule_names()


# ---- Recipes --------------------------------------------------------------------------

RUN_LENGTH = 100000
"""The user's ``train.max_step`` that the recipes are checked with (they set none)."""


def _recipe(name):
    with open(os.path.join(ROOT, "configs", name), encoding="utf-8") as recipe:
        loaded = yaml.safe_load(recipe)
    assert "train" not in loaded or "max_step" not in loaded["train"], f"{name} sets train.max_step"
    return loaded["params"], RUN_LENGTH


RECIPES = {
    "noam_transformer.yml": lambda s: ref.noam(s, 2.0, 512, 8000),
    "linear_decay.yml": lambda s: ref.polynomial(s, 5e-5, 100000, end=0.0),
    "warmup_linear.yml": lambda s: ref.wrapped(
        functools.partial(ref.polynomial, initial=1e-4, decay_steps=90000, end=0.0), s, warmup=10000),
    "warmup_cosine.yml": lambda s: ref.wrapped(
        functools.partial(ref.cosine, initial=7e-4, decay_steps=96000, alpha=0.1), s, warmup=4000),
    "step_decay.yml": lambda s: ref.wrapped(
        functools.partial(ref.exponential, initial=1e-3, decay_steps=20000, rate=0.5, staircase=True),
        s, warmup=2000, floor=1e-5),
    "exponential_decay.yml": lambda s: ref.wrapped(
        functools.partial(ref.exponential, initial=1e-3, decay_steps=50000, rate=0.1), s, warmup=2000),
    "warmup_stable_decay.yml": lambda s: ref.wrapped(
        functools.partial(ref.stable_decay, rate=7e-4, total=96000, decay=0.2 * 96000, shape="1-sqrt"),
        s, warmup=4000),
}


def test_every_recipe_is_covered():
    shipped = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "configs", "*.yml"))}
    assert shipped - {"moving_average.yml"} == set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_builds_its_schedule(name):
    params, max_step = _recipe(name)
    warmup = params.get("warmup_steps", 0)
    steps = sorted({0, 1, max(warmup - 1, 0), warmup, warmup + 1, max_step // 2, max_step - 1,
                    max_step, max_step + 1, 2 * max_step} | set(range(0, max_step + 1, 997)))
    np.testing.assert_allclose(curve(params, steps, max_step), RECIPES[name](np.array(steps)),
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", sorted(n for n in RECIPES if "warmup_steps" in _recipe(n)[0]))
def test_recipe_is_continuous_at_the_end_of_warmup(name):
    params, max_step = _recipe(name)
    warmup = params["warmup_steps"]
    before, at, after = curve(params, [warmup - 1, warmup, warmup + 1], max_step)
    assert at - before == pytest.approx(at / warmup, rel=1e-3)  # the last warmup increment
    assert abs(after - at) <= at / warmup


# ---- Integral floats (YAML writes 1.0e+5 as 100000.0) ---------------------------------

def test_integral_floats_are_accepted_where_an_integer_is_required():
    written = {"learning_rate": 1e-3, "warmup_steps": 10.0, "start_decay_steps": 5.0, "decay_step_duration": 2.0,
               "decay_type": "PolynomialDecay", "decay_params": {"decay_steps": 1.0e2, "end_learning_rate": 0.0}}
    schedule = config.learning_rate_schedule(written)
    assert (schedule.warmup_steps, schedule.step_start, schedule.step_duration, schedule.schedule.decay_steps) \
        == (10, 5, 2, 100)
    assert all(type(v) is int for v in (schedule.warmup_steps, schedule.step_start, schedule.step_duration,
                                        schedule.schedule.decay_steps))
    steps = [0, 9, 10, 15, 16, 17, 100, 214, 215, 216, 1000]
    expected = ref.wrapped(functools.partial(ref.polynomial, initial=1e-3, decay_steps=100, end=0.0),
                           steps, warmup=10, start=5, duration=2)
    np.testing.assert_allclose(schedules.evaluate(schedule, steps), expected, rtol=RTOL, atol=ATOL)
    assert written["warmup_steps"] == 10.0 and type(written["warmup_steps"]) is float  # not modified


@pytest.mark.parametrize(
    "params,max_step,check",
    [
        ({"learning_rate": 1e-3, "decay_type": "PolynomialDecay", "decay_params": {"decay_steps": "max_step"}},
         1.0e+5, lambda s: s.schedule.decay_steps == 100000),
        ({"learning_rate": 1e-3, "decay_type": "WarmupStableDecay",
          "decay_params": {"total_steps": 1.0e+3, "decay_steps": 2.0e+2}}, None,
         lambda s: (s.schedule.total_steps, s.schedule.decay_steps) == (1000, 200)),
        ({"decay_type": "PiecewiseConstantDecay", "decay_params": {"boundaries": [10.0, 20.0], "values": [3, 2, 1]}},
         None, lambda s: s.schedule.boundaries == [10, 20]),
        ({"learning_rate": 1e-3, "decay_type": "CosineDecay", "decay_params": {"decay_steps": 5.0e+1}}, None,
         lambda s: s.schedule.decay_steps == 50),
    ],
)
def test_integral_floats_in_decay_params_and_max_step(params, max_step, check):
    assert check(config.learning_rate_schedule(params, max_step=max_step))


@pytest.mark.parametrize(
    "params,max_step,message",
    [
        ({"learning_rate": 1, "start_decay_steps": 1.5}, None, "params.start_decay_steps must be an integer >= 0, got 1.5"),
        ({"learning_rate": 1, "decay_step_duration": 2.5}, None,
         "params.decay_step_duration must be an integer >= 1, got 2.5"),
        ({"learning_rate": 1, "decay_type": "PolynomialDecay", "decay_params": {"decay_steps": 1.5}}, None,
         "decay_params.decay_steps must be an integer > 0, got 1.5"),
        ({"learning_rate": 1, "decay_type": "PolynomialDecay", "decay_params": {"decay_steps": "max_step"}}, 10.5,
         "train.max_step must be an integer > 0, got 10.5"),
        ({"decay_type": "PiecewiseConstantDecay", "decay_params": {"boundaries": [10.5, 20], "values": [3, 2, 1]}},
         None, r"decay_params.boundaries\[\] must be an integer >= 0, got 10.5"),
        ({"learning_rate": 1, "warmup_steps": float("inf")}, None, "params.warmup_steps must be an integer >= 0, got inf"),
        ({"learning_rate": 1, "warmup_steps": True}, None, "params.warmup_steps must be an integer >= 0, got True"),
    ],
)
def test_fractional_values_are_still_refused_where_an_integer_is_required(params, max_step, message):
    with pytest.raises(ConfigError, match=message):
        config.learning_rate_schedule(params, max_step=max_step)


# ---- A second warmup ------------------------------------------------------------------

FIRST_NOAM = f"{ref.noam(0, 2.0, 512, 8000):.3g}"  # written as the message writes it

SECOND_WARMUPS = {
    "NoamDecay": ({"model_dim": 512, "warmup_steps": 8000}, "decay_params.warmup_steps: 8000", FIRST_NOAM),
    # scale / sqrt(max(step, warmup)) at step 0
    "RsqrtDecay": ({"warmup_steps": 4000}, "decay_params.warmup_steps: 4000", f"{2.0 * 4000**-0.5:.3g}"),
    # learning_rate * t / warmup, t = step + 1
    "InvSqrtDecay": ({"warmup_steps": 4000}, "decay_params.warmup_steps: 4000", f"{2.0 * 1 / 4000:.3g}"),
    "RNMTPlusDecay": ({"num_replicas": 1}, "decay_params.warmup_steps: 500, its default", None),
}


@pytest.mark.parametrize("name", sorted(SECOND_WARMUPS))
def test_a_second_warmup_is_refused_naming_both_keys_and_what_to_write(name):
    decay_params, own, first = SECOND_WARMUPS[name]
    params = {"learning_rate": 2.0, "warmup_steps": 20, "decay_type": name, "decay_params": decay_params}
    with pytest.raises(ConfigError) as error:
        config.learning_rate_schedule(params)
    message = str(error.value)
    assert message.startswith(f"params.warmup_steps: 20 would add a second warmup: decay_type {name} has its own "
                              f"({own}); the rate would rise to {name}'s first value ")
    if first is not None:
        assert f"first value {first} over 20 steps" in message
    assert ("To warm up over 20 steps, remove params.warmup_steps and set decay_params.warmup_steps: 20; or keep "
            "params.warmup_steps with a params.decay_type that has no warmup (e.g. PolynomialDecay, CosineDecay, "
            "WarmupStableDecay)") in message


@pytest.mark.parametrize(
    "name,decay_params,remove",
    [
        ("CosineAnnealing", {"warmup_steps": 100}, "decay_params.warmup_steps"),
        ("CosineDecay", {"decay_steps": 1000, "warmup_steps": 100, "warmup_target": 3.0},
         "decay_params.warmup_steps and warmup_target"),
    ],
)
def test_a_second_warmup_in_front_of_an_optional_one(name, decay_params, remove):
    params = {"learning_rate": 2.0, "warmup_steps": 20, "decay_type": name, "decay_params": decay_params}
    with pytest.raises(ConfigError, match=(
            rf"^params.warmup_steps: 20 would add a second warmup: decay_type {name} has its own "
            rf"\(decay_params.warmup_steps: 100\); .* set decay_params.warmup_steps: 20; or keep params.warmup_steps "
            rf"and remove {remove}$")):
        config.learning_rate_schedule(params)


@pytest.mark.parametrize(
    "params",
    [
        {"learning_rate": 2.0, "decay_type": "NoamDecay", "decay_params": {"model_dim": 512, "warmup_steps": 8000}},
        {"learning_rate": 2.0, "warmup_steps": 0, "decay_type": "NoamDecay",
         "decay_params": {"model_dim": 512, "warmup_steps": 8000}},
        {"learning_rate": 2.0, "warmup_steps": 20, "decay_type": "CosineAnnealing", "decay_params": {}},
        # Keras ignores CosineDecay's warmup_steps without a warmup_target: no warmup of its own.
        {"learning_rate": 2.0, "warmup_steps": 20, "decay_type": "CosineDecay",
         "decay_params": {"decay_steps": 100, "warmup_steps": 10}},
        {"learning_rate": 2.0, "warmup_steps": 20, "decay_type": "WarmupStableDecay",
         "decay_params": {"total_steps": 100, "decay_steps": 10}},
    ],
)
def test_one_warmup_is_accepted(params):
    # Accepted, with the wrapper's warmup as given: the rate at step 0 is the warmup's start (0)
    # when params.warmup_steps is set, else the schedule's own first value.
    schedule = config.learning_rate_schedule(params)
    warmup = params.get("warmup_steps", 0)
    assert schedule.warmup_steps == warmup
    first = float(schedule(tf.constant(0, tf.int64)))
    assert (first == 0) == (warmup > 0), first


def test_second_warmup_over_auto_config_says_what_to_write_in_the_yaml():
    """The catalog Transformer's --auto_config gives NoamDecay; a user adds only params.warmup_steps."""
    import opennmt

    merged = opennmt.config.merge_config(opennmt.models.TransformerTiny().auto_config(), {"params": {"warmup_steps": 20}})
    params = merged["params"]
    assert (params["decay_type"], params["decay_params"]) == ("NoamDecay", {"model_dim": 64, "warmup_steps": 8000})
    with pytest.raises(ConfigError) as error:
        config.learning_rate_schedule(params, auto_config=True)
    assert str(error.value) == (
        "params.warmup_steps: 20 would add a second warmup: --auto_config sets decay_type: NoamDecay, which has its "
        f"own (decay_params.warmup_steps: 8000); the rate would rise to NoamDecay's first value "
        f"{ref.noam(0, 2.0, 64, 8000):.3g} over 20 steps, then go through NoamDecay's warmup. To warm up over 20 "
        "steps, remove params.warmup_steps and write params.decay_params: {model_dim: 64, warmup_steps: 20} (it "
        "replaces the automatic decay_params whole); or keep params.warmup_steps with a params.decay_type that has "
        "no warmup (e.g. PolynomialDecay, CosineDecay, WarmupStableDecay)")
    # What the message says to write, merged as OpenNMT-tf merges it: Noam with a 20-step warmup.
    advice = opennmt.config.merge_config(opennmt.models.TransformerTiny().auto_config(),
                                         {"params": {"decay_params": {"model_dim": 64, "warmup_steps": 20}}})
    steps = [0, 1, 18, 19, 20, 21, 1000]
    schedule = config.learning_rate_schedule(advice["params"], auto_config=True)
    np.testing.assert_allclose(schedules.evaluate(schedule, steps), ref.noam(steps, 2.0, 64, 20), rtol=RTOL)


# ---- Schedule lengths resolved for OpenNMT-tf's batch-size autotuning trials ------------

def test_resolve_max_step_gives_the_numbers_of_the_real_run():
    params = {"learning_rate": 1.0, "warmup_steps": 10.0, "start_decay_steps": 5, "decay_step_duration": 2,
              "decay_type": "WarmupStableDecay", "decay_params": {"total_steps": "max_step", "decay_steps": 20}}
    resolved = config.resolve_max_step(params, max_step=1.0e+2)
    assert resolved["decay_params"] == {"total_steps": (100 - 10 - 5) // 2, "decay_steps": 20}
    assert resolved["warmup_steps"] == 10 and params["decay_params"]["total_steps"] == "max_step"
    # A trial runs 5 steps: with the resolved copy it builds the real run's schedule.
    steps = [0, 9, 10, 15, 16, 60, 99, 100]
    np.testing.assert_array_equal(schedules.evaluate(config.learning_rate_schedule(resolved, max_step=5), steps),
                                  schedules.evaluate(config.learning_rate_schedule(params, max_step=100), steps))
    with pytest.raises(ConfigError, match="no step is left to decay"):
        config.learning_rate_schedule(params, max_step=5)
    with pytest.raises(ConfigError, match="train.max_step is not set"):
        config.resolve_max_step(params, max_step=None)
