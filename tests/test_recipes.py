"""No shipped recipe (configs/*.yml) shrinks the weights: the weight decay of each over its whole
schedule, against the formula; and a short real run of the one recipe with weight decay (BERT's),
beside the broken BERT recipe as a control.

A short run cannot tell the other recipes apart from a broken one: at their rates (1e-6 to 5e-5
over the first updates) no recipe moves the weights by 10% in 25 updates, so they are checked
over their whole schedule instead (and each one's rates against the formula in
tests/test_config.py, warmup_cosine's in a real run in tests/test_recipe_order.py).
``configs/moving_average.yml`` sets no optimizer, schedule nor decay (it is merged with the
others and changes what checkpoints hold, which tests/test_moving_average.py checks)."""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np
import pytest
import yaml

from conftest import ROOT, data_config, run, write_yaml
from onmt_trainkit import plotting
from test_end_to_end import model_weights

RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yml")))
RUNS = {os.path.splitext(os.path.basename(p))[0]: [p] for p in RECIPES
        if os.path.basename(p) != "moving_average.yml"}
TRAINED = ("warmup_linear",)
"""The recipes with a weight decay: the ones a short run checks."""

BROKEN_BERT = {  # configs/warmup_linear.yml before issue 12: TensorFlow Addons' unscaled decay
    "params": {"optimizer": "AdamW", "optimizer_params": {"weight_decay": 0.01, "beta_1": 0.9, "beta_2": 0.999,
                                                           "epsilon": 1e-6},
               "learning_rate": 1e-4, "warmup_steps": 10000, "decay_type": "PolynomialDecay",
               "decay_params": {"decay_steps": "max_step", "end_learning_rate": 0, "power": 1.0}},
    "train": {"max_step": 100000},
}

SCALE_TOLERANCE = 0.1
"""A sane run keeps every weight tensor's RMS within 10% of its value after the first update."""

TRAIN_ALL = """
import json, sys
import tensorflow as tf
import onmt_trainkit
import opennmt
model_file, overrides, jobs = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
for name, paths in jobs:
    config = opennmt.config.load_config(paths)
    config = opennmt.config.merge_config(config, {**overrides, "model_dir": overrides["model_dir"] + name})
    model = opennmt.config.load_model_from_file(model_file, as_builder=True)
    opennmt.Runner(model, config, seed=1).train()
"""


@pytest.fixture(scope="module")
def recipe_runs(tmp_path_factory, corpus, model_file):
    """Trains the recipes with a weight decay, as shipped (their optimizer and schedule, over a
    run of 100,000 steps), for one pass over 200 examples in batches of 8 (25 updates or a few
    more), plus the broken BERT recipe as a control; all in one Python process, one
    ``opennmt.Runner`` each, as ``onmt-main train`` runs."""
    root = tmp_path_factory.mktemp("recipes")
    broken = write_yaml(root / "broken_bert.yml", BROKEN_BERT)
    jobs = [[name, RUNS[name]] for name in TRAINED] + [["broken_bert", [broken]]]
    overrides = {"model_dir": str(root) + "/", "data": data_config(corpus),
                 "train": {"max_step": 100000, "batch_size": 8, "batch_type": "examples", "single_pass": True,
                           "save_checkpoints_steps": 1000, "keep_checkpoint_max": 2}}
    script = root / "train_all.py"
    script.write_text(TRAIN_ALL)
    process = run([sys.executable, str(script), model_file, json.dumps(overrides), json.dumps(jobs)])
    return {"root": root, "log": process.stderr}


def scale_ratios(model_dir: str) -> dict[str, float]:
    """RMS of each weight tensor at the last checkpoint over its RMS after the first update;
    the tensors that start at 0 (biases, layer norms' beta: after one update they are of the
    size of the learning rate, under 0.01) are left out."""
    prefixes = sorted((p[:-len(".index")] for p in glob.glob(os.path.join(model_dir, "ckpt-*.index"))),
                      key=lambda p: int(p.rsplit("-", 1)[1]))
    assert len(prefixes) == 2 and prefixes[0].endswith("ckpt-1") and int(prefixes[1].rsplit("-", 1)[1]) >= 25
    first, last = model_weights(prefixes[0]), model_weights(prefixes[1])
    rms = {name: float(np.sqrt(np.mean(np.square(value, dtype=np.float64)))) for name, value in first.items()}
    return {name: float(np.sqrt(np.mean(np.square(last[name], dtype=np.float64)))) / rms[name]
            for name in first if rms[name] > 0.01}


def test_the_trained_recipes_are_those_with_a_weight_decay():
    for name, (path,) in RUNS.items():
        with open(path, encoding="utf-8") as recipe:
            params = yaml.safe_load(recipe)["params"]
        decays = bool(params.get("weight_decay") or (params.get("optimizer_params") or {}).get("weight_decay"))
        assert decays == (name in TRAINED), name


@pytest.mark.parametrize("name", TRAINED)
def test_a_short_run_keeps_the_weights_scale(recipe_runs, name):
    ratios = scale_ratios(str(recipe_runs["root"] / name))
    assert len(ratios) == 26  # 16 kernels, 2 embeddings, 7 layer norms' gamma, the output layer
    outside = {n: r for n, r in ratios.items() if abs(r - 1) > SCALE_TOLERANCE}
    assert not outside, f"{name}: weights whose RMS moved by more than 10%: {outside}"


def test_the_broken_bert_recipe_is_caught_and_warned_about(recipe_runs):
    """The check above fails for TensorFlow Addons' unscaled decay: 0.99 per update shrinks
    every weight to about 0.99^(updates - 1) of its size after the first update."""
    ratios = scale_ratios(str(recipe_runs["root"] / "broken_bert"))
    assert max(ratios.values()) < 1 - SCALE_TOLERANCE
    assert "optimizer_params.weight_decay is 0.01: TensorFlow Addons applies it as given at every step" in \
        recipe_runs["log"]
    assert recipe_runs["log"].count("TensorFlow Addons applies it as given") == 1


@pytest.mark.parametrize("paths", [RUNS[n] for n in sorted(RUNS)] + [[None]], ids=sorted(RUNS) + ["broken_bert"])
def test_the_whole_schedule_decays_a_weight_by_less_than_half(paths, tmp_path):
    """Over the updates at steps 0 to ``train.max_step`` - 1, decay alone (a weight that gets
    no gradient) multiplies a weight by prod_s (1 - c(s)): at least 0.5 for every recipe
    (BERT's: exp(-0.01 * 5) = 0.95, the sum of its lr(s) being 1e-4 * 100000 / 2 = 5), and
    0.99^100000 = exp(-1005) for the broken one."""
    if paths == [None]:
        paths = [write_yaml(tmp_path / "broken_bert.yml", BROKEN_BERT)]
    curve = plotting.curve_from_files(paths, 100000)  # the recipes set no train.max_step
    updates = len(curve.values) - 1
    log_kept = float(np.sum(np.log1p(-curve.weight_decay[:updates])))
    name = os.path.basename(paths[0])
    if name == "broken_bert.yml":
        assert log_kept == pytest.approx(100000 * np.log(0.99), rel=1e-6)
    else:
        assert np.exp(log_kept) >= 0.5
    if name == "warmup_linear.yml":
        assert np.exp(log_kept) == pytest.approx(np.exp(-0.01 * 5), rel=1e-4)
