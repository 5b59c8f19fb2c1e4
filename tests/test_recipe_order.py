"""The shipped recipes never override the user's run: OpenNMT-tf merges ``--config`` files left
to right (the last one wins), and a recipe sets no ``train.max_step``, so the user's length is the
run's and the schedule's, whichever side of the recipe the user's file stands. Real ``onmt-main``
runs of ``configs/warmup_cosine.yml`` on a tiny model."""

from __future__ import annotations

import functools
import glob
import os

import numpy as np
import pytest
import yaml

import reference as ref
from conftest import ROOT, assert_refused, data_config, onmt_main, write_yaml
from onmt_trainkit.events import read_learning_rates

RECIPE = os.path.join(ROOT, "configs", "warmup_cosine.yml")
MAX_STEP = 60
WARMUP = 10


def _data(directory, corpus, **train) -> str:
    return write_yaml(directory / "data.yml", {
        "model_dir": str(directory / "run"), "data": data_config(corpus),
        "train": {"batch_size": 8, "batch_type": "examples", "save_summary_steps": 1,
                  "save_checkpoints_steps": MAX_STEP, **train},
    })


def _check_run(model_dir: str) -> None:
    """The run ended at step 60, its rates those of warmup 10 then a cosine over 60 - 10 steps."""
    steps = [int(p[:-len(".index")].rsplit("-", 1)[1]) for p in glob.glob(os.path.join(model_dir, "ckpt-*.index"))]
    assert max(steps) == MAX_STEP
    logged = read_learning_rates(model_dir)
    steps = sorted(logged)
    assert steps == list(range(1, MAX_STEP + 1))
    with open(RECIPE, encoding="utf-8") as recipe:
        peak = yaml.safe_load(recipe)["params"]["learning_rate"]
    expected = ref.wrapped(functools.partial(ref.cosine, initial=peak, decay_steps=MAX_STEP - WARMUP, alpha=0.1),
                           np.array(steps), warmup=WARMUP)
    np.testing.assert_allclose([logged[s] for s in steps], expected, rtol=2e-6, atol=1e-10)
    assert logged[MAX_STEP] == pytest.approx(0.1 * peak, rel=1e-5)  # the cosine's end: alpha * peak


def test_recipes_set_no_run_length():
    for path in glob.glob(os.path.join(ROOT, "configs", "*.yml")):
        with open(path, encoding="utf-8") as recipe:
            loaded = yaml.safe_load(recipe)
        assert "max_step" not in (loaded.get("train") or {}), path
        assert "data" not in loaded and "model_dir" not in loaded, path


def test_data_then_recipe_then_the_users_file(tmp_path, corpus, model_file):
    # The user's file also misspells a key of the plugin's and one of OpenNMT-tf's: each is named
    # in one warning line, and the run goes on without them.
    user = write_yaml(tmp_path / "user.yml", {
        "params": {"warmup_steps": WARMUP},
        "train": {"max_step": MAX_STEP, "moving_average_evry": 2, "save_checkpoint_steps": 10},
    })
    process = onmt_main("--model", model_file, "--config", _data(tmp_path, corpus), RECIPE, user, "--seed", "1",
                        "train")
    _check_run(str(tmp_path / "run"))
    # Averaging builds the optimizer, not the schedule's values: no train.max_step needed.
    onmt_main("--model", model_file, "--config", _data(tmp_path, corpus), RECIPE, "average_checkpoints",
              "--output_dir", str(tmp_path / "avg"), "--max_count", "1")
    assert (tmp_path / "avg" / f"ckpt-{MAX_STEP}.index").exists()
    lines = [line.split("] ", 1)[-1] for line in process.stderr.splitlines()]
    warnings = [line for line in lines if "unknown key" in line]
    # The log opens with the banner (the plugin is active), then the warnings.
    assert min(i for i, line in enumerate(lines) if line.startswith("onmt-trainkit ")) < lines.index(warnings[0])
    assert warnings == [
        "onmt-trainkit: unknown key train.moving_average_evry (did you mean moving_average_every?): neither "
        "OpenNMT-tf 2.32 nor onmt-trainkit reads it (a model of your own that reads it can say so: "
        "onmt_trainkit.keys.declare('train.moving_average_evry'))",
        "onmt-trainkit: unknown key train.save_checkpoint_steps (did you mean save_checkpoints_steps?): neither "
        "OpenNMT-tf 2.32 nor onmt-trainkit reads it (a model of your own that reads it can say so: "
        "onmt_trainkit.keys.declare('train.save_checkpoint_steps'))",
    ]


def test_the_users_length_before_the_recipe(tmp_path, corpus, model_file):
    # max_step in the data file, before the recipe: the recipe has none to replace it with.
    user = write_yaml(tmp_path / "user.yml", {"params": {"warmup_steps": WARMUP}})
    data = _data(tmp_path, corpus, max_step=MAX_STEP)
    process = onmt_main("--model", model_file, "--config", data, RECIPE, user, "--seed", "1", "train")
    _check_run(str(tmp_path / "run"))
    assert "unknown key" not in process.stderr


def test_the_recipe_last_keeps_the_users_length(tmp_path, corpus, model_file):
    # The recipe last wins on its own keys (its 4000-step warmup) but not on the length: the
    # schedule is resolved against the user's 60 steps, and refused as too short for the warmup.
    user = write_yaml(tmp_path / "user.yml", {"train": {"max_step": MAX_STEP}})
    process = onmt_main("--model", model_file, "--config", _data(tmp_path, corpus), user, RECIPE, "train",
                        check=False)
    assert_refused(process, "decay_params.decay_steps is 'max_step' but no step is left to decay: (train.max_step "
                            "60 - params.warmup_steps 4000 - params.start_decay_steps 0) // "
                            "params.decay_step_duration 1 = -3940; it must be >= 1")


def test_a_length_max_step_without_a_max_step_is_refused(tmp_path, corpus, model_file):
    process = onmt_main("--model", model_file, "--config", _data(tmp_path, corpus), RECIPE, "train", check=False)
    assert_refused(process, "decay_params.decay_steps is 'max_step' but train.max_step is not set; set "
                            "train.max_step or give a number of steps")
