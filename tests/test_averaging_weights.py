"""Any saved weights out as a model directory: ``tools/average_checkpoints.py --weights
raw|ema|ema:<decay>`` on a real ``onmt-main`` run with two decays, checked against the tensors
that TensorFlow reads from its checkpoints; the outputs in stock ``onmt-main eval`` (the plugin
off: ``ONMT_TRAINKIT=0``) and a resumed training; ``--best`` by the metrics of each average;
refusals."""

from __future__ import annotations

import os
import re
import shutil
import types

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from conftest import data_config, onmt_main, tool, write_yaml
from onmt_trainkit import averaging
from test_averaging import refuse, write_metrics, write_run
from test_end_to_end import VALUE, tensorboard_scalars
from test_moving_average import OldState

STEPS = (25, 50, 75, 100)
RAW = "moving_average/raw/"
SECOND = "moving_average/0..99/"  # the average of 0.99, the decay not in model/
SOURCE = {"ema": "", "ema:0.9": "", "raw": RAW, "ema:0.99": SECOND}
"""Where each ``--weights`` is in a checkpoint of the run, in front of the model's names."""


def model_names(prefix) -> list[str]:
    reader = tf.train.load_checkpoint(str(prefix))
    return sorted(n for n in reader.get_variable_to_shape_map()
                  if n.startswith("model/") and ".OPTIMIZER_SLOT" not in n)


def tensors(prefix, names) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name in names}


def graph_keys(prefix) -> set[str]:
    """The tensor names that the checkpoint's object graph refers to, as TensorFlow parses it;
    checked to be in the checkpoint, as a restore needs."""
    reader = tf.train.load_checkpoint(str(prefix))
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    keys = {attribute.checkpoint_key for node in graph.nodes for attribute in node.attributes}
    assert keys == set(reader.get_variable_to_shape_map()) - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    return keys


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus, model_file):
    """100 steps with decays 0.9 and 0.99 (apart from step 80, where 0.9 stops following
    (1 + t) / (10 + t)), a checkpoint and an evaluation of each average every 25 steps."""
    root = tmp_path_factory.mktemp("weights")
    config = {
        "model_dir": str(root / "run"),
        "data": {**data_config(corpus), "eval_features_file": corpus["test_src"],
                 "eval_labels_file": corpus["test_tgt"]},
        "params": {"optimizer": "Adam", "learning_rate": 0.005, "beam_width": 1, "maximum_decoding_length": 5},
        "train": {"batch_size": 16, "batch_type": "examples", "max_step": 100, "save_checkpoints_steps": 25,
                  "keep_checkpoint_max": 10, "save_summary_steps": 25, "moving_average_decay": [0.9, 0.99],
                  "moving_average_eval_all": True},
        "eval": {"steps": 25, "batch_size": 10},
        "infer": {"batch_size": 10},
    }
    path = write_yaml(root / "config.yml", config)
    onmt_main("--model", model_file, "--config", path, "--seed", "1", "train", "--with_eval")
    return types.SimpleNamespace(root=root, model_dir=root / "run", config=config, config_path=path, corpus=corpus)


@pytest.mark.parametrize("weights", ["raw", "ema", "ema:0.99", "ema:0.9"])
def test_one_checkpoint_gives_the_weights_it_holds(run, tmp_path, weights):
    output = tmp_path / "out"
    result = averaging.average_checkpoints(str(run.model_dir), str(output), averaging.Selection(max_count=1),
                                           weights=weights)
    assert result.weights == weights and result.step == 100 and result.notes == []
    source = run.model_dir / "ckpt-100"
    names = model_names(source)
    assert len(names) == 50
    held = tensors(source, [SOURCE[weights] + n for n in names])
    ours = tensors(output / "ckpt-100", names)
    for name in names:
        assert ours[name].dtype == np.float32
        np.testing.assert_array_equal(ours[name], held[SOURCE[weights] + name], err_msg=name)
    # The optimizer and the step of the checkpoint; no moving-average state.
    saved = graph_keys(output / "ckpt-100")
    assert not [n for n in saved if n.startswith("moving_average/")]
    assert f"optimizer/iter{VALUE}" in saved and any(".OPTIMIZER_SLOT/optimizer/m" in n for n in saved)
    assert saved == {n for n in graph_keys(source) if not n.startswith("moving_average/")}


def test_without_the_optimizer(run, tmp_path):
    output = tmp_path / "out"
    averaging.average_checkpoints(str(run.model_dir), str(output), averaging.Selection(max_count=2),
                                  weights="raw", drop_optimizer=True)
    assert graph_keys(output / "ckpt-100") == set(model_names(output / "ckpt-100")) | {f"save_counter{VALUE}"}


def test_the_weights_differ(run):
    """The three sources are three different sets of weights at step 100."""
    prefix = run.model_dir / "ckpt-100"
    names = model_names(prefix)
    raw, ema, second = (tensors(prefix, [p + n for n in names]) for p in (RAW, "", SECOND))
    for one, other in ((raw, ema), (ema, second), (raw, second)):
        assert any(not np.array_equal(a, b) for a, b in zip(one.values(), other.values()))


@pytest.mark.parametrize("weights", ["raw", "ema:0.99"])
def test_average_of_three_checkpoints_against_numpy(run, tmp_path, weights):
    output = tmp_path / "out"
    result = averaging.average_checkpoints(str(run.model_dir), str(output), averaging.Selection(max_count=3),
                                           weights=weights)
    assert [averaging.checkpoint_step(c) for c in result.checkpoints] == [50, 75, 100]
    names = model_names(run.model_dir / "ckpt-100")
    held = [tensors(run.model_dir / f"ckpt-{s}", [SOURCE[weights] + n for n in names]) for s in (50, 75, 100)]
    ours = tensors(output / "ckpt-100", names)
    for name in names:
        expected = np.mean([h[SOURCE[weights] + name].astype(np.float64) for h in held], axis=0)
        np.testing.assert_array_equal(ours[name], expected.astype(np.float32), err_msg=name)


def evaluation_loss(log: str, step: int) -> str:
    return re.search(rf"Evaluation result for step {step}: loss = ([0-9.]+) ;", log).group(1)


def test_stock_eval_of_the_raw_weights_gives_their_loss_during_training(run, tmp_path):
    output = tmp_path / "raw"
    process = tool("average_checkpoints.py", "--model_dir", str(run.model_dir), "--output_dir", str(output),
                   "--weights", "raw", "--max_count", "1")
    assert process.stdout.strip() == f"averaged 1 checkpoint (step 100; 50 weights, raw) into {output}/ckpt-100"
    evaluated = onmt_main("--config", run.config_path, "--model_dir", str(output), "eval", stock=True)
    recorded = tensorboard_scalars(str(run.model_dir / "eval"), "eval/raw/loss")
    assert evaluation_loss(evaluated.stderr, 100) == f"{recorded[100]:f}"
    assert recorded[100] != tensorboard_scalars(str(run.model_dir / "eval"), "metrics/loss")[100]


def test_stock_eval_of_the_second_decay_gives_its_loss_during_training(run, tmp_path):
    output = tmp_path / "second"
    tool("average_checkpoints.py", "--model_dir", str(run.model_dir), "--output_dir", str(output),
         "--weights", "ema:0.99", "--max_count", "1")
    evaluated = onmt_main("--config", run.config_path, "--model_dir", str(output), "eval", stock=True)
    recorded = tensorboard_scalars(str(run.model_dir / "eval"), "eval/ema_0.99/loss")
    assert evaluation_loss(evaluated.stderr, 100) == f"{recorded[100]:f}"
    assert recorded[100] != tensorboard_scalars(str(run.model_dir / "eval"), "metrics/loss")[100]


def test_training_resumed_from_an_average_trains_its_weights(run, tmp_path, model_file):
    """The output holds no moving-average state, so a run resumed from it trains the output's
    weights (not the training weights of the newest checkpoint) and starts its averages from
    them: one step at learning rate 0 saves them unchanged as training weights and average."""
    output = tmp_path / "raw_avg"
    tool("average_checkpoints.py", "--model_dir", str(run.model_dir), "--output_dir", str(output),
         "--weights", "raw", "--max_count", "2")
    config = {**run.config, "model_dir": str(output),
              "params": {**run.config["params"], "learning_rate": 0.0},
              "train": {**run.config["train"], "max_step": 101}}
    path = write_yaml(tmp_path / "resume.yml", config)
    process = onmt_main("--config", path, "train")
    assert f"{output}/ckpt-100 has no moving average state; the averages start from the current weights" in (
        process.stderr)
    names = model_names(output / "ckpt-100")
    averaged = tensors(output / "ckpt-100", names)
    resumed = tf.train.load_checkpoint(str(output / "ckpt-101"))
    assert resumed.get_tensor(f"optimizer/iter{VALUE}") == 101
    newest_raw = tensors(run.model_dir / "ckpt-100", [RAW + n for n in names])
    for name in names:
        np.testing.assert_array_equal(resumed.get_tensor(RAW + name), averaged[name], err_msg=name)
        np.testing.assert_array_equal(resumed.get_tensor(name), averaged[name], err_msg=name)
    assert any(not np.array_equal(averaged[n], newest_raw[RAW + n]) for n in names)


# ---- --best by the metrics of each average --------------------------------------------

def best_steps(model_dir, weights, metric, count=1):
    chosen = averaging.select_checkpoints(str(model_dir), averaging.Selection(best=count, metric=metric),
                                          weights=weights)
    return [averaging.checkpoint_step(c) for c in chosen]


def test_best_reads_the_metrics_that_training_recorded(run, tmp_path):
    eval_dir = str(run.model_dir / "eval")
    for weights, tag in (("raw", "eval/raw/loss"), ("ema:0.99", "eval/ema_0.99/loss"), ("ema", "metrics/loss")):
        recorded = tensorboard_scalars(eval_dir, tag)
        assert sorted(recorded) == list(STEPS)
        assert best_steps(run.model_dir, weights, "loss", 2) == sorted(sorted(recorded, key=recorded.get)[:2])
    output = tmp_path / "best"
    process = tool("average_checkpoints.py", "--model_dir", str(run.model_dir), "--output_dir", str(output),
                   "--weights", "raw", "--best", "1", "--metric", "loss")
    raw = tensorboard_scalars(eval_dir, "eval/raw/loss")
    step = min(raw, key=raw.get)
    assert process.stdout.splitlines() == [
        f"best 1 by raw/loss (step {step}: {raw[step]:g})",
        f"averaged 1 checkpoint (step {step}; 50 weights, raw) into {output}/ckpt-{step}",
    ]


@pytest.fixture()
def crafted(run, tmp_path):
    """A copy of the run whose evaluations give each weights another best step."""
    model_dir = tmp_path / "run"
    shutil.copytree(run.model_dir, model_dir)
    shutil.rmtree(model_dir / "eval")
    writer = tf.summary.create_file_writer(str(model_dir / "eval"))
    best = {"metrics/loss": 100, "eval/ema_0.9/loss": 100, "eval/raw/loss": 25, "eval/ema_0.99/loss": 50}
    with writer.as_default():
        for tag, best_step in best.items():
            for step in STEPS:
                tf.summary.scalar(tag, 1.0 if step == best_step else 2.0 + step / 100, step=step)
    writer.close()
    return model_dir


@pytest.mark.parametrize("weights,metric,step", [
    ("ema", "loss", 100),
    ("ema:0.9", "loss", 100),
    ("raw", "loss", 25),
    ("ema:0.99", "loss", 50),
    ("ema:0.990", "loss", 50),
    ("ema", "raw/loss", 25),
    ("ema", "eval/raw/loss", 25),
    ("raw", "eval/ema_0.990/loss", 50),
    ("ema:0.99", "ema_0.99/loss", 50),
    ("raw", "metrics/loss", 100),
])
def test_best_metric_follows_the_weights_unless_named(crafted, weights, metric, step):
    assert best_steps(crafted, weights, metric) == [step]


def test_best_without_each_average_evaluated(run, tmp_path):
    """Without train.moving_average_eval_all only the model weights are evaluated: they are
    the average of the first decay, and the training weights of a run without moving average."""
    model_dir = tmp_path / "run"
    shutil.copytree(run.model_dir, model_dir)
    shutil.rmtree(model_dir / "eval")
    write_metrics(str(model_dir), {s: {"loss": 3.0 - s / 100} for s in STEPS})
    assert best_steps(model_dir, "ema:0.9", "loss") == [100]
    for weights, label in (("raw", "raw"), ("ema:0.99", "ema_0.99")):
        with pytest.raises(averaging.AveragingError, match=re.escape(
                f"--metric 'loss' ({label}/loss, for --weights {weights}) was not recorded during training; "
                "recorded: loss; train.moving_average_eval_all: true records raw/loss and ema_<decay>/loss "
                "for each decay")):
            best_steps(model_dir, weights, "loss")
    plain = tmp_path / "plain"
    write_run(plain)
    write_metrics(str(plain), {100: {"loss": 1.0}, 200: {"loss": 3.0}, 300: {"loss": 2.0}})
    assert best_steps(plain, "raw", "loss", 2) == [100, 300]


# ---- Refusals: exit 2, one line, nothing written ----------------------------------------

@pytest.mark.parametrize("value", ["emma", "EMA", "ema:", "ema:1", "ema:0", "ema:x", "raw:0.9", "ema:1.5"])
def test_malformed_weights_are_refused(run, tmp_path, value):
    refuse(["--model_dir", str(run.model_dir), "--output_dir", str(tmp_path / "out"), "--weights", value],
           f"--weights must be raw, ema or ema:<decay> with 0 < decay < 1, got '{value}'",
           [str(run.model_dir), str(tmp_path)])


def test_refusals(run, tmp_path):
    watch = [str(run.model_dir), str(tmp_path)]
    args = ["--model_dir", str(run.model_dir), "--output_dir", str(tmp_path / "out")]
    refuse([*args, "--weights", "ema:0.5", "--max_count", "2"],
           f"checkpoint {run.model_dir}/ckpt-75: weights ema:0.5: the checkpoint holds no average of decay 0.5; "
           "it holds ema:0.9, ema:0.99", watch)
    refuse([*args, "--weights", "raw", "--model_key", "net"],
           "--weights raw reads the moving average of the model saved under 'model', not under --model_key 'net'",
           watch)
    refuse([*args, "--weights", "raw", "--best", "2", "--metric", "bleu"],
           "--metric 'bleu' (raw/bleu, for --weights raw) was not recorded during training; recorded: loss, "
           "perplexity, ema_0.9/loss, ema_0.9/perplexity, ema_0.99/loss, ema_0.99/perplexity, raw/loss, "
           "raw/perplexity", watch)


def test_checkpoints_without_moving_average(tmp_path):
    """Their model weights are their training weights; they hold no average to ask for."""
    model_dir = tmp_path / "plain"
    saved = write_run(model_dir)
    output = tmp_path / "out"
    process = tool("average_checkpoints.py", "--model_dir", str(model_dir), "--output_dir", str(output),
                   "--weights", "raw", "--max_count", "2")
    assert process.stdout.splitlines()[0] == (
        f"{model_dir}/ckpt-400, {model_dir}/ckpt-500 hold no moving-average state: their model weights are "
        "taken as the training weights")
    expected = (saved[400]["dense"].astype(np.float64) + saved[500]["dense"]) / 2
    np.testing.assert_array_equal(tf.train.load_checkpoint(str(output)).get_tensor(f"model/dense{VALUE}"),
                                  expected.astype(np.float32))
    refuse(["--model_dir", str(model_dir), "--output_dir", str(tmp_path / "other"), "--weights", "ema:0.9"],
           f"checkpoint {model_dir}/ckpt-100: weights ema:0.9: the checkpoint holds no average of decay 0.9; "
           "it holds no moving average", [str(model_dir), str(tmp_path)])


def test_checkpoints_of_onmt_trainkit_0_1_0(tmp_path):
    """Training weights kept by position cannot be named without the model: raw is refused,
    the model weights (ema) are averaged, without the old state."""
    model = tf.Module()
    model.dense = tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3))
    state = OldState([np.zeros((2, 3), np.float32)], 4)
    os.makedirs(tmp_path / "old")
    prefix = tf.train.Checkpoint(model=model, moving_average=state).write(str(tmp_path / "old" / "ckpt-4"))
    refuse(["--checkpoints", prefix, "--output_dir", str(tmp_path / "out"), "--weights", "raw"],
           f"checkpoint {prefix}: weights raw: the checkpoint keeps its moving average as onmt-trainkit did before 0.2.0 "
           "(training weights by position, decay not recorded): only 'ema' (its model weights) can be read",
           [str(tmp_path)])
    tool("average_checkpoints.py", "--checkpoints", prefix, "--output_dir", str(tmp_path / "out"))
    reader = tf.train.load_checkpoint(str(tmp_path / "out"))
    np.testing.assert_array_equal(reader.get_tensor(f"model/dense{VALUE}"), model.dense.numpy())
    assert not [n for n in reader.get_variable_to_shape_map() if n.startswith("moving_average/")]
