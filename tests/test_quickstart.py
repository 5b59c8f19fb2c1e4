"""The command of OpenNMT-tf's quickstart, ``onmt-main --model_type ... --auto_config train``,
with no model file: the plugin is active through its start-up hook, and ``ONMT_TRAINKIT=0``
gives stock OpenNMT-tf. Real ``onmt-main`` runs of the catalog's ``TransformerTiny``."""

from __future__ import annotations

import functools
import os
import subprocess

import numpy as np
import pytest
import tensorflow as tf

import onmt_trainkit
import reference as ref
from conftest import BIN, assert_refused, data_config, write_yaml
from onmt_trainkit.events import read_learning_rates

MAX_STEP = 12
WARMUP = 5
# decay_steps: max_step resolves to max_step - warmup_steps; the stock run writes the number.
DECAY_STEPS = MAX_STEP - WARMUP
RECIPE = {
    "optimizer": "Adam", "learning_rate": 1e-3, "warmup_steps": WARMUP, "decay_type": "PolynomialDecay",
    "decay_params": {"decay_steps": "max_step", "end_learning_rate": 0.0},
}
TRAIN = {"max_step": MAX_STEP, "batch_type": "examples", "save_summary_steps": 1, "save_checkpoints_steps": MAX_STEP,
         "moving_average_decay": 0.9, "average_last_checkpoints": 0}


def quickstart(directory, corpus, params: dict, train: dict, **env: str) -> subprocess.CompletedProcess:
    """``onmt-main --model_type TransformerTiny --config data.yml recipe.yml --auto_config train``."""
    data = write_yaml(directory / "data.yml", {"model_dir": str(directory / "run"), "data": data_config(corpus)})
    recipe = write_yaml(directory / "recipe.yml", {"params": params, "train": train})
    variables = {k: v for k, v in os.environ.items() if k != "ONMT_TRAINKIT"}
    return subprocess.run(
        [os.path.join(BIN, "onmt-main"), "--model_type", "TransformerTiny", "--config", data, recipe, "--auto_config",
         "--seed", "1", "train"],
        capture_output=True, text=True, env={**variables, "TF_CPP_MIN_LOG_LEVEL": "2", **env})


def succeeded(process: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert process.returncode == 0, process.stderr[-5000:]
    return process


def expected_rates(steps, warmup=WARMUP):
    return ref.wrapped(functools.partial(ref.polynomial, initial=1e-3, decay_steps=DECAY_STEPS, end=0.0),
                       steps, warmup=warmup)


def checkpoint_names(model_dir: str) -> set[str]:
    return {name for name, _ in tf.train.list_variables(os.path.join(model_dir, f"ckpt-{MAX_STEP}"))}


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory, corpus):
    """The plugin's recipe over --auto_config, with the batch size tuned by OpenNMT-tf (batch_size 0):
    one 5-step trial in a subprocess (batch size 10, between 1 and effective_batch_size 20), then the
    run with the tuned batch size (0.7 * 10 = 7, 3 accumulated batches per step)."""
    directory = tmp_path_factory.mktemp("quickstart")
    train = {**TRAIN, "batch_size": 0, "effective_batch_size": 20}
    process = succeeded(quickstart(directory, corpus, RECIPE, train))
    return {"log": process.stderr, "model_dir": str(directory / "run")}


@pytest.fixture(scope="module")
def stock_run(tmp_path_factory, corpus):
    """The same command and recipe with ONMT_TRAINKIT=0 (lengths as numbers: stock OpenNMT-tf
    knows no max_step length)."""
    directory = tmp_path_factory.mktemp("stock")
    params = {**RECIPE, "decay_params": {"decay_steps": DECAY_STEPS, "end_learning_rate": 0.0}}
    train = {**TRAIN, "batch_size": 16, "effective_batch_size": None}
    process = succeeded(quickstart(directory, corpus, params, train, ONMT_TRAINKIT="0"))
    return {"log": process.stderr, "model_dir": str(directory / "run")}


def test_the_log_opens_with_the_plugin_and_its_features(plugin_run):
    lines = [line.split("] ", 1)[-1] for line in plugin_run["log"].splitlines()]
    banner = lines.index(f"onmt-trainkit {onmt_trainkit.__version__} is active: OpenNMT-tf runs with its "
                         "learning-rate schedules, moving average, weight decay and checkpoint averaging "
                         "(ONMT_TRAINKIT=0 for stock OpenNMT-tf)")
    assert banner < lines.index("Using parameters:")
    features = [line for line in lines if line.startswith("onmt-trainkit: ")]
    assert features[0] == (f"onmt-trainkit: learning rate: linear warmup over {WARMUP} steps from 0, then "
                           f"PolynomialDecay(initial_learning_rate=0.001, decay_steps={DECAY_STEPS}, "
                           "end_learning_rate=0)")
    assert features[1].startswith("onmt-trainkit: moving average of the weights: on, decay 0.9 ")
    assert features[2] == "onmt-trainkit: weight decay: off"
    assert lines.index(features[0]) < min(i for i, line in enumerate(lines) if line.startswith("Step = "))


def test_logged_learning_rates_equal_the_formula(plugin_run):
    logged = read_learning_rates(plugin_run["model_dir"])
    steps = sorted(logged)
    assert steps == list(range(1, MAX_STEP + 1))
    np.testing.assert_allclose([logged[s] for s in steps], expected_rates(steps), rtol=2e-6, atol=1e-9)
    assert logged[WARMUP] == pytest.approx(1e-3) and logged[MAX_STEP] == 0


def test_batch_size_autotuning_trial_builds_the_schedule_of_the_run(plugin_run):
    # The trial trains 5 steps (train.max_step: 5): decay_steps: max_step resolved there would
    # leave (5 - 5) = 0 steps to decay; it gets the run's 7.
    log = plugin_run["log"]
    assert "Trying training with batch size 10..." in log
    assert "... succeeded" in log and "... failed" not in log
    assert "Batch size auto tuned to 7." in log


def test_the_checkpoint_holds_the_plugins_moving_average(plugin_run):
    prefix = os.path.join(plugin_run["model_dir"], f"ckpt-{MAX_STEP}")
    names = checkpoint_names(plugin_run["model_dir"])
    state = sorted(name for name in names if name.startswith("moving_average/"))
    assert state, "no moving-average state in the checkpoint"
    counts = [int(tf.train.load_variable(prefix, name)) for name in state if "num_updates" in name]
    assert counts == [MAX_STEP]


def test_onmt_trainkit_0_gives_stock_opennmt(stock_run):
    assert "onmt-trainkit" not in stock_run["log"]
    logged = read_learning_rates(stock_run["model_dir"])
    steps = sorted(logged)
    assert steps == list(range(1, MAX_STEP + 1))
    # Stock OpenNMT-tf ignores params.warmup_steps: no warmup, the decay from step 0.
    np.testing.assert_allclose([logged[s] for s in steps], expected_rates(steps, warmup=0), rtol=2e-6, atol=1e-9)
    # Its moving average is not saved: the checkpoint holds no state of it.
    assert not [name for name in checkpoint_names(stock_run["model_dir"]) if name.startswith("moving_average")]


def test_a_warmup_added_to_auto_configs_noam_is_refused(tmp_path, corpus):
    process = quickstart(tmp_path, corpus, {"warmup_steps": 20}, {"max_step": 5, "batch_size": 16,
                                                                   "batch_type": "examples"})
    first = ref.noam(0, 2.0, 64, 8000)  # TransformerTiny: 64 units; auto_config: scale 2, warmup 8000
    assert_refused(process, (
        "params.warmup_steps: 20 would add a second warmup: --auto_config sets decay_type: NoamDecay, which has its "
        f"own (decay_params.warmup_steps: 8000); the rate would rise to NoamDecay's first value {first:.3g} over 20 "
        "steps, then go through NoamDecay's warmup. To warm up over 20 steps, remove params.warmup_steps and write "
        "params.decay_params: {model_dim: 64, warmup_steps: 20} (it replaces the automatic decay_params whole)"
    ))
    assert not os.path.exists(tmp_path / "run" / "checkpoint")
