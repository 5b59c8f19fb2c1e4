"""Real ``onmt-main`` runs on a tiny Transformer: schedules, moving average, averaging."""

from __future__ import annotations

import csv
import functools
import os
import re

import numpy as np
import pytest
import tensorflow as tf

import reference as ref
from conftest import data_config, in_process, onmt_main, tool, write_yaml
from onmt_trainkit.cli import plot_schedule_main
from onmt_trainkit.events import read_learning_rates, wall_time_spans
from onmt_trainkit.tensor_bundle import CheckpointReader

VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
LOGGED = re.compile(r"Step = (\d+) ;.*Learning rate = ([0-9.]+) ; Loss")


def logged_rates(output: str) -> dict[int, str]:
    return {int(step): rate for step, rate in LOGGED.findall(output)}


def model_weights(prefix: str) -> dict[str, np.ndarray]:
    reader = CheckpointReader(prefix)
    return {n: reader.array(n).copy() for n, e in reader.entries.items()
            if n.startswith("model/") and ".OPTIMIZER_SLOT" not in n and e.dtype == 1}


def all_tensors(prefix: str) -> dict[str, np.ndarray]:
    reader = CheckpointReader(prefix)
    return {n: reader.array(n).copy() for n in reader.entries if n != "_CHECKPOINTABLE_OBJECT_GRAPH"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus, model_file):
    """40 steps: warmup (a plugin-only key) + linear decay to max_step, EMA, eval and BLEU."""
    root = tmp_path_factory.mktemp("trained")
    config = {
        "model_dir": str(root / "run"),
        "data": {**data_config(corpus), "eval_features_file": corpus["test_src"],
                 "eval_labels_file": corpus["test_tgt"]},
        "params": {"optimizer": "Adam", "learning_rate": 0.002, "warmup_steps": 10,
                   "decay_type": "PolynomialDecay",
                   "decay_params": {"decay_steps": "max_step", "end_learning_rate": 0.0},
                   "beam_width": 1},
        "train": {"batch_size": 16, "batch_type": "examples", "max_step": 40,
                  "save_checkpoints_steps": 10, "keep_checkpoint_max": 10, "save_summary_steps": 1,
                  "moving_average_decay": 0.9, "average_last_checkpoints": 3},
        "eval": {"steps": 20, "batch_size": 10, "external_evaluators": "bleu"},
        "infer": {"batch_size": 10},
    }
    path = write_yaml(root / "config.yml", config)
    process = onmt_main("--model", model_file, "--config", path, "--seed", "1", "train", "--with_eval")
    return {"root": root, "config": path, "model_dir": config["model_dir"], "log": process.stderr,
            "corpus": corpus}


def test_logged_learning_rates_follow_the_schedule(trained):
    rates = logged_rates(trained["log"])
    assert sorted(rates) == list(range(1, 41))
    schedule = functools.partial(ref.polynomial, initial=0.002, decay_steps=30, end=0.0)
    for step in (1, 9, 10, 11, 25, 39, 40):
        expected = ref.wrapped(schedule, [step], warmup=10)[0]
        assert rates[step] == f"{expected:f}", step


def test_plot_tool_gives_what_training_logs(trained, tmp_path):
    csv_path, png_path = tmp_path / "lr.csv", tmp_path / "lr.png"
    process = tool("plot_schedule.py", "--config", trained["config"], "--csv", str(csv_path),
                   "--output", str(png_path))
    assert process.stdout.split() == ["wrote", str(csv_path), "wrote", str(png_path)]
    with open(csv_path, newline="") as rows:
        table = list(csv.reader(rows))
    assert table[0] == ["step", "config"]
    assert [int(r[0]) for r in table[1:]] == list(range(41))
    for step, rate in logged_rates(trained["log"]).items():
        assert f"{float(table[step + 1][1]):f}" == rate
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_tool_overlays_curves_and_refuses_bad_configs(trained, tmp_path):
    other = write_yaml(tmp_path / "other.yml", {"params": {"learning_rate": 0.004}})
    csv_path = tmp_path / "lr.csv"
    in_process(plot_schedule_main, "--config", trained["config"], "--config", trained["config"], other,
               "--csv", str(csv_path), "--max_step", "100")
    with open(csv_path, newline="") as rows:
        table = list(csv.reader(rows))
    assert table[0] == ["step", "config", "config + other"] and len(table) == 102
    assert float(table[11][2]) == pytest.approx(0.004) and float(table[101][2]) == 0.0
    bad = write_yaml(tmp_path / "bad.yml", {"params": {"decay_type": "NoamDecy", "learning_rate": 1}})
    for args, message in (
        (["--config", bad, "--max_step", "10"], "params.decay_type: unknown value 'NoamDecy' (did you mean 'NoamDecay'?)"),
        (["--config", str(tmp_path / "missing.yml"), "--max_step", "10"], "configuration file"),
        (["--config", trained["config"], "--max_step", "0"], "--max_step must be >= 1, got 0"),
    ):
        process = in_process(plot_schedule_main, *args, "--csv", str(tmp_path / "x.csv"),
                             "--output", str(tmp_path / "x.png"), check=False)
        assert process.returncode == 2
        assert process.stderr.strip().splitlines() == [f"onmt-trainkit-plot: error: {process.stderr.strip()[len('onmt-trainkit-plot: error: '):]}"]
        assert message in process.stderr
        assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.png").exists()


def tensorboard_scalars(directory: str, tag: str) -> dict[int, float]:
    """``{step: value}`` of a scalar in ``directory``'s event files, read by TensorFlow."""
    values = {}
    for path in tf.io.gfile.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def test_tensorboard_has_the_effective_decay(trained):
    decays = tensorboard_scalars(trained["model_dir"], "optim/moving_average_decay")
    assert sorted(decays) == list(range(1, 41))
    assert decays[1] == 0.0  # the first update copies the weights
    for step in (2, 30, 40):
        assert decays[step] == pytest.approx(min(0.9, (1 + step) / (10 + step)))


def test_logged_learning_rates_read_without_tensorflow(trained):
    logged = tensorboard_scalars(trained["model_dir"], "optim/learning_rate")
    assert len(logged) >= 2
    assert read_learning_rates(trained["model_dir"]) == logged


def test_wall_times_read_without_tensorflow(trained):
    (path,) = tf.io.gfile.glob(os.path.join(trained["model_dir"], "events.out.tfevents.*"))
    times = [event.wall_time for event in tf.compat.v1.train.summary_iterator(path)]
    assert wall_time_spans(trained["model_dir"]) == [(min(times), max(times))]
    assert max(times) > min(times)


def test_stock_commands_use_the_model_directory(trained, tmp_path):
    """Stock OpenNMT-tf (the plugin installed but off, ``ONMT_TRAINKIT=0``: the model file's
    ``import onmt_trainkit`` then activates nothing) uses the model directory: infer, eval,
    export, average_checkpoints (OpenNMT-tf's own float32 average, not the plugin's)."""
    corpus = trained["corpus"]
    predictions = tmp_path / "predictions.txt"
    onmt_main("--config", trained["config"], "infer", "--features_file", corpus["test_src"],
              "--predictions_file", str(predictions), stock=True)
    assert len(predictions.read_text().splitlines()) == 10
    process = onmt_main("--config", trained["config"], "eval", stock=True)
    assert "onmt-trainkit" not in process.stderr
    # Stock eval reads the checkpoint's model weights, the average; the evaluation made
    # during training at the same step used the average too, so the losses are the same.
    during_training = re.search(r"Evaluation result for step 40: loss = ([0-9.]+)", trained["log"]).group(1)
    after = re.search(r"Evaluation result for step 40: loss = ([0-9.]+) ; perplexity = ", process.stderr).group(1)
    assert after == during_training
    onmt_main("--config", trained["config"], "export", "--output_dir", str(tmp_path / "saved"), stock=True)
    assert (tmp_path / "saved" / "saved_model.pb").exists()
    onmt_main("--config", trained["config"], "export", "--output_dir", str(tmp_path / "ct2"),
              "--format", "ctranslate2", stock=True)
    assert (tmp_path / "ct2" / "model.bin").exists()
    output = tmp_path / "stock_avg"
    onmt_main("--config", trained["config"], "average_checkpoints", "--output_dir", str(output),
              "--max_count", "2", stock=True)
    averaged = model_weights(str(output / "ckpt-40"))
    inputs = [model_weights(os.path.join(trained["model_dir"], f"ckpt-{s}")) for s in (30, 40)]
    for name, value in averaged.items():  # stock averages in float32: value / 2 + value / 2
        expected = inputs[0][name] / np.float32(2) + inputs[1][name] / np.float32(2)
        np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-7)


def test_average_last_checkpoints_at_the_end_of_training(trained):
    averaged = model_weights(os.path.join(trained["model_dir"], "avg", "ckpt-40"))
    inputs = [model_weights(os.path.join(trained["model_dir"], f"ckpt-{s}")) for s in (20, 30, 40)]
    assert set(averaged) == set(inputs[0])
    for name, value in averaged.items():
        expected = np.mean([w[name].astype(np.float64) for w in inputs], axis=0).astype(np.float32)
        np.testing.assert_array_equal(value, expected)
    assert os.path.exists(os.path.join(trained["model_dir"], "avg", "model_description.py"))


def test_onmt_main_average_checkpoints_uses_the_plugin(trained, tmp_path):
    output = tmp_path / "stock_avg"
    process = onmt_main("--config", trained["config"], "average_checkpoints", "--output_dir", str(output),
                        "--max_count", "2")
    assert f"Saved averaged checkpoint to {output}/ckpt-40" in process.stderr
    averaged = model_weights(str(output / "ckpt-40"))
    inputs = [model_weights(os.path.join(trained["model_dir"], f"ckpt-{s}")) for s in (30, 40)]
    for name, value in averaged.items():
        np.testing.assert_array_equal(
            value, ((inputs[0][name].astype(np.float64) + inputs[1][name]) / 2).astype(np.float32))


def test_averaging_tool_output_translates_and_best_uses_recorded_bleu(trained, tmp_path):
    bleu = tensorboard_scalars(os.path.join(trained["model_dir"], "eval"), "metrics/bleu")
    assert sorted(bleu) == [20, 40]
    best_step = max(bleu, key=bleu.get)
    output = tmp_path / "best"
    process = tool("average_checkpoints.py", "--model_dir", trained["model_dir"], "--output_dir", str(output),
                   "--best", "1", "--metric", "bleu")
    assert f"averaged 1 checkpoint (step {best_step};" in process.stdout
    predictions = tmp_path / "predictions.txt"
    onmt_main("--config", trained["config"], "--model_dir", str(output), "infer",
              "--features_file", trained["corpus"]["test_src"], "--predictions_file", str(predictions))
    assert len(predictions.read_text().splitlines()) == 10
