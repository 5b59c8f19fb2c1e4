"""``onmt-main --mixed_precision train`` (what GPU users run) with a recipe, two moving-average decays
and weight decay: the checkpoints' model weights are float32 and hold the moving average, a run
stopped and resumed ends as the uninterrupted one, and stock ``infer`` and the averaging tool work
on its model directory.

Without a GPU, OpenNMT-tf's ``--mixed_precision`` leaves mixed precision off ("no GPU is
detected"); these runs enable it as OpenNMT-tf's own ``enable_mixed_precision(force=True)`` does
(float16 compute, float32 variables, a ``LossScaleOptimizer``), then run ``onmt-main``'s ``main``.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from conftest import ROOT, data_config, onmt_main, run, tool, write_yaml
from test_end_to_end import VALUE, all_tensors, model_weights
from test_moving_average import numpy_averages

RECIPE = os.path.join(ROOT, "configs", "warmup_cosine.yml")
DECAYS = (0.6, 0.3)
STEPS = 8
RAW = "moving_average/raw/"

FORCED = """
import sys
from opennmt.utils import misc
enable = misc.enable_mixed_precision
misc.enable_mixed_precision = lambda force=False: enable(force=True)
from opennmt.bin.main import main
sys.argv[0] = "onmt-main"
main()
"""
"""``onmt-main`` with mixed precision enabled on any hardware."""


def _run(root, corpus, model_file, name: str, max_step: int):
    user = write_yaml(root / f"{name}-{max_step}.yml", {
        "model_dir": str(root / name),
        "data": data_config(corpus, single_example=True),
        # decay_steps as a number: the first part of the stopped run (max_step 4) has the schedule
        # of the whole run, as a run stopped by a signal has.
        "params": {"warmup_steps": 2, "learning_rate": 0.01, "decay_params": {"decay_steps": STEPS - 2},
                   "weight_decay": 0.05, "beam_width": 1, "maximum_decoding_length": 3},
        "train": {"max_step": max_step, "batch_size": 1, "batch_type": "examples", "save_checkpoints_steps": 1,
                  "keep_checkpoint_max": 20, "save_summary_steps": 1, "moving_average_decay": list(DECAYS)},
    })
    return run([sys.executable, "-c", FORCED, "--model", model_file, "--config", RECIPE, user, "--mixed_precision",
                "--seed", "3", "train"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus, model_file):
    root = tmp_path_factory.mktemp("mixed")
    straight = _run(root, corpus, model_file, "straight", STEPS)
    _run(root, corpus, model_file, "parts", 4)
    resumed = _run(root, corpus, model_file, "parts", STEPS)
    return {"root": root, "log": straight.stderr, "resumed_log": resumed.stderr}


def test_the_run_is_mixed_precision_with_the_plugin(runs):
    assert "onmt-trainkit: weight decay: w -= lr(s) * 0.05 * w (params.weight_decay)" in runs["log"]
    assert "Mixed precision not enabled" not in runs["log"]
    # OpenNMT-tf's loss scaling is in the checkpoint: the optimizer is a LossScaleOptimizer.
    names = all_tensors(str(runs["root"] / "straight" / f"ckpt-{STEPS}"))
    assert f"optimizer/loss_scale/current_loss_scale{VALUE}" in names, sorted(n for n in names if "model" not in n)


def test_model_weights_are_float32_and_the_first_moving_average(runs):
    directory = runs["root"] / "straight"
    trajectory, model = {}, {}
    for step in range(1, STEPS + 1):
        tensors = all_tensors(str(directory / f"ckpt-{step}"))
        averaged = sorted(name[len(RAW):] for name in tensors if name.startswith(RAW))
        assert len(averaged) > 20
        assert all(tensors[name].dtype == np.float32 for name in averaged)
        trajectory[step] = np.concatenate([tensors[RAW + n].ravel() for n in averaged])
        model[step] = np.concatenate([tensors[n].ravel() for n in averaged])
    expected = numpy_averages(trajectory, DECAYS, 0, 1)
    for step in range(1, STEPS + 1):
        np.testing.assert_allclose(model[step], expected[step][DECAYS[0]], rtol=1e-5, atol=1e-7,
                                   err_msg=f"step {step}")
    assert not np.allclose(model[STEPS], trajectory[STEPS])


def test_a_stop_and_resume_continues_exactly(runs):
    assert "Moving average: restored the training weights and the averages" in runs["resumed_log"]
    whole = all_tensors(str(runs["root"] / "straight" / f"ckpt-{STEPS}"))
    parts = all_tensors(str(runs["root"] / "parts" / f"ckpt-{STEPS}"))
    assert set(whole) == set(parts)
    for name in set(whole) - {f"save_counter{VALUE}"}:
        np.testing.assert_array_equal(whole[name], parts[name], err_msg=name)


def test_stock_infer_and_the_averaging_tool(runs, corpus):
    directory = runs["root"] / "straight"
    config = runs["root"] / f"straight-{STEPS}.yml"
    predictions = runs["root"] / "predictions.txt"
    onmt_main("--config", str(config), "--model_dir", str(directory), "infer", "--features_file", corpus["test_src"],
              "--predictions_file", str(predictions), stock=True)
    with open(corpus["test_src"], encoding="utf-8") as source:
        assert len(predictions.read_text().splitlines()) == len(source.readlines())
    output = runs["root"] / "avg"
    tool("average_checkpoints.py", "--model_dir", str(directory), "--output_dir", str(output), "--max_count", "2")
    averaged = model_weights(str(output / f"ckpt-{STEPS}"))
    last, before = (model_weights(str(directory / f"ckpt-{step}")) for step in (STEPS, STEPS - 1))
    for name, value in averaged.items():
        assert value.dtype == last[name].dtype
        np.testing.assert_allclose(value, (last[name].astype(np.float64) + before[name]) / 2, rtol=1e-6, atol=1e-7)
