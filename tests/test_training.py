"""The moving averages in real ``onmt-main`` training: two decays with a start step and a
period against numpy, evaluation of each average, exact resume, resume with the moving
average turned off or from another checkpoint, by-name restore after ``freeze_layers``
changed, checkpoints written before onmt-trainkit 0.2.0 (MirroredStrategy: tests/test_mirrored.py).

Besides a run really stopped and resumed, the resuming runs start from a copy of the
checkpoints that the uninterrupted run wrote up to their step (:func:`experiments.runner.copy_checkpoints`),
so that both can be compared step by step."""

from __future__ import annotations

import concurrent.futures
import os
import re
import types

import numpy as np
import opennmt
import pytest
import tensorflow as tf

from conftest import assert_refused, data_config, onmt_main, write_yaml
from experiments.runner import copy_checkpoints
from onmt_trainkit import moving_average_layout as layout
from onmt_trainkit.events import read_scalars, wall_time_spans
from test_end_to_end import VALUE, all_tensors
from test_moving_average import OldState, numpy_averages

PARAMS = {"optimizer": "Adam", "learning_rate": 0.01, "beam_width": 1, "maximum_decoding_length": 2}
DECAYS = (0.45, 0.25)  # at steps 3 to 8, min(d, (1 + t) / (10 + t)) keeps them apart
START, EVERY, STEPS = 3, 2, 8  # updates at steps 3 (a copy), 5 and 7
EMA = {"moving_average_decay": list(DECAYS), "moving_average_start_step": START, "moving_average_every": EVERY}
RAW = "moving_average/raw/"
SECOND = "moving_average/0..25/"  # the average of 0.25, the decay not swapped into model/


def run_config(root, corpus, name, config_name=None, params=None, **train):
    """Every batch is the first training sentence; a checkpoint at every step."""
    return write_yaml(root / f"{config_name or name}.yml", {
        "model_dir": str(root / name),
        "data": {**data_config(corpus, single_example=True),
                 "eval_features_file": corpus["test_src"], "eval_labels_file": corpus["test_tgt"]},
        "params": {**PARAMS, **(params or {})},
        "train": {"batch_size": 1, "batch_type": "examples", "save_checkpoints_steps": 1,
                  "keep_checkpoint_max": 100, "save_summary_steps": 1, **train},
        "eval": {"steps": 4, "batch_size": 10},
    })


def train(model_file, config, *args, checkpoint_path=None):
    path = [] if checkpoint_path is None else ["--checkpoint_path", str(checkpoint_path)]
    return onmt_main("--model", model_file, "--config", config, "--seed", "2", *path, "train", *args)


def averaged_names(tensors):
    """The model names of the averaged variables, from a checkpoint's training weights."""
    return sorted(name[len(RAW):] for name in tensors if name.startswith(RAW))


def assert_same_tensors(a, b, names=None):
    names = (set(a) | set(b)) - {f"save_counter{VALUE}"} if names is None else names
    assert set(names) <= set(a) and set(names) <= set(b)
    for name in names:  # save_counter counts this process's saves
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus, model_file):
    """Two runs of 8 steps with evaluation every 4: without moving average, and with two
    decays, start step 3, period 2 and every average evaluated."""
    root = tmp_path_factory.mktemp("runs")
    configs = [run_config(root, corpus, "base", max_step=STEPS),
               run_config(root, corpus, "ema", max_step=STEPS, moving_average_eval_all=True, **EMA)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # side by side: the other tests wait for both
        base, ema = pool.map(lambda config: train(model_file, config, "--with_eval"), configs)
    return types.SimpleNamespace(base=root / "base", ema=root / "ema", base_log=base.stderr, ema_log=ema.stderr)


def test_each_average_against_numpy(runs):
    first = all_tensors(str(runs.ema / "ckpt-1"))
    averaged = averaged_names(first)
    assert len(averaged) == 50
    # The layout: the base run's names, the training weights and the second average by name.
    assert set(first) == set(all_tensors(str(runs.base / "ckpt-1"))) | {RAW + n for n in averaged} | {
        SECOND + n for n in averaged} | {f"moving_average/0..45/num_updates{VALUE}", f"{SECOND}num_updates{VALUE}"}
    assert layout.weight_names(first, "raw") == {n: RAW + n for n in averaged}
    assert layout.weight_names(first, "ema:0.25") == {n: SECOND + n for n in averaged}
    checkpoints = {step: all_tensors(str(runs.ema / f"ckpt-{step}")) for step in range(1, STEPS + 1)}
    trajectory = {}
    for step, tensors in checkpoints.items():
        base = all_tensors(str(runs.base / f"ckpt-{step}"))
        for name in averaged:  # the moving average does not change training
            np.testing.assert_array_equal(tensors[RAW + name], base[name], err_msg=name)
        trajectory[step] = np.concatenate([base[n].ravel() for n in averaged])
    expected = numpy_averages(trajectory, DECAYS, START, EVERY)
    for step, tensors in checkpoints.items():
        ours = {0.45: np.concatenate([tensors[n].ravel() for n in averaged]),
                0.25: np.concatenate([tensors[SECOND + n].ravel() for n in averaged])}
        for decay in DECAYS:
            np.testing.assert_allclose(ours[decay], expected[step][decay], rtol=1e-5, atol=1e-7,
                                       err_msg=f"decay {decay} at step {step}")
            if step <= START:  # the weights until the start, then their copy
                np.testing.assert_array_equal(ours[decay], trajectory[step])
            if step == START + 1:
                np.testing.assert_array_equal(ours[decay], trajectory[START])
            updates = len([s for s in (3, 5, 7) if s <= step])
            assert int(tensors[f"moving_average/{layout.escape(repr(decay))}/num_updates{VALUE}"]) == updates
    assert not np.allclose(ours[0.45], ours[0.25]) and not np.allclose(ours[0.45], trajectory[STEPS])
    # The decay applied to the first average, written at the steps that update it.
    logged = read_scalars(str(runs.ema), "optim/moving_average_decay")
    assert {step: values[""] for step, values in logged.items()} == pytest.approx(
        {3: 0.0, 5: min(0.45, 6 / 15) ** 2, 7: min(0.45, 8 / 17) ** 2})


def test_each_average_is_evaluated(runs):
    """Which weights each label evaluates; the loss of a second average by stock ``onmt-main
    eval`` is in tests/test_averaging_weights.py."""
    ema = read_scalars(str(runs.ema / "eval"))
    base = read_scalars(str(runs.base / "eval"))
    assert sorted(ema) == [4, 8]
    for step, metrics in ema.items():
        assert {t for t in metrics if t.startswith("eval/")} == {
            f"eval/{label}/{metric}" for label in ("raw", "ema_0.45", "ema_0.25") for metric in ("loss", "perplexity")}
        # The first decay is the model's, evaluated as usual (early stopping, export); the
        # training weights are those of the run without moving average.
        assert metrics["eval/ema_0.45/loss"] == metrics["metrics/loss"]
        assert metrics["eval/ema_0.45/perplexity"] == metrics["metrics/perplexity"]
        assert metrics["eval/raw/loss"] == base[step]["metrics/loss"]
        assert metrics["eval/ema_0.25/perplexity"] == pytest.approx(np.exp(metrics["eval/ema_0.25/loss"]), rel=1e-6)
    assert ema[4]["eval/ema_0.25/loss"] == ema[4]["eval/ema_0.45/loss"]  # both the copy of step 3
    assert ema[8]["eval/raw/loss"] != ema[8]["eval/ema_0.45/loss"] != ema[8]["eval/ema_0.25/loss"]
    assert re.search(r"Moving average: evaluation for step 8: raw loss = [0-9.]+ ; ema_0.45 loss = [0-9.]+ ; "
                     r"ema_0.25 loss = [0-9.]+", runs.ema_log)


def test_resumed_run_equals_an_uninterrupted_one(runs, tmp_path, corpus, model_file):
    """A run stopped at step 5 and resumed in its directory, as a user does."""
    train(model_file, run_config(tmp_path, corpus, "parts", "first", max_step=5, **EMA))
    process = train(model_file, run_config(tmp_path, corpus, "parts", "second", max_step=STEPS, **EMA))
    assert re.search(r"Moving average: restored the training weights and the averages \(decay 0.45: 2 updates, "
                     r"decay 0.25: 2 updates\) from \S*parts/ckpt-5\n", process.stderr)
    whole, parts = all_tensors(str(runs.ema / "ckpt-8")), all_tensors(str(tmp_path / "parts" / "ckpt-8"))
    assert set(whole) == set(parts) and len(whole) > 200
    assert_same_tensors(whole, parts)
    listed = tf.train.get_checkpoint_state(str(tmp_path / "parts")).all_model_checkpoint_paths
    assert [os.path.basename(path) for path in listed] == [f"ckpt-{step}" for step in range(1, STEPS + 1)]
    # One event file, so one span of wall times, per onmt-main process.
    (first, first_end), (second, second_end) = wall_time_spans(str(tmp_path / "parts"))
    assert first < first_end < second < second_end


def test_onmt_trainkit_0_1_checkpoint_resumes_exactly(runs, tmp_path, corpus, model_file):
    """A checkpoint with the state by position, as onmt-trainkit wrote it before 0.2.0 (one average,
    in model/), made from the run's checkpoint 5: the resumed run ends as the run that went
    on; the second decay, which it does not hold, starts at its next update (step 7)."""
    stopped = tmp_path / "old"
    copy_checkpoints(runs.ema, 5, stopped)
    model = opennmt.config.load_model_from_file(model_file)
    model.initialize(data_config(corpus, single_example=True), params=PARAMS)
    optimizer = model.get_optimizer()
    model.create_variables(optimizer=optimizer)
    prefix = str(stopped / "ckpt-5")
    tf.train.Checkpoint(model=model, optimizer=optimizer).read(prefix).expect_partial()
    reader = tf.train.load_checkpoint(prefix)
    names = {v.ref(): n for n, v in opennmt.utils.misc.get_variables_name_mapping(model, "model").items()
             if reader.has_tensor(n)}
    training = [reader.get_tensor(RAW + names[v.ref()]) for v in model.trainable_variables]
    state = OldState(training, reader.get_tensor(f"moving_average/0..45/num_updates{VALUE}"))
    for name in os.listdir(stopped):
        if name.startswith("ckpt-5."):
            os.remove(stopped / name)
    tf.train.Checkpoint(model=model, optimizer=optimizer, moving_average=state).write(prefix)
    old = all_tensors(prefix)
    assert f"moving_average/weights/49{VALUE}" in old and not any(n.startswith(RAW) for n in old)
    # With other trainable variables (freeze_layers), weights kept by position cannot be matched.
    frozen = run_config(tmp_path, corpus, "old", "old_frozen", max_step=STEPS,
                        params={"freeze_layers": ["encoder/layers/0"]}, **EMA)
    refused = onmt_main("--model", model_file, "--config", frozen, "--seed", "2", "train", check=False)
    assert_refused(refused, "ckpt-5 keeps the training weights of 50 trainable variables by position "
                            "(the layout before onmt-trainkit 0.2.0) but the model has ")
    assert tf.train.latest_checkpoint(str(stopped)) == prefix
    process = train(model_file, run_config(tmp_path, corpus, "old", max_step=STEPS, **EMA))
    assert re.search(r"Moving average: restored the training weights and the averages \(decay 0.45: 2 updates\) "
                     r"from \S*old/ckpt-5, written by position \(before onmt-trainkit 0.2.0\)", process.stderr)
    assert "holds no average of decay 0.25: it starts from the weights at its next update" in process.stderr
    whole, resumed = all_tensors(str(runs.ema / "ckpt-8")), all_tensors(str(stopped / "ckpt-8"))
    assert set(whole) == set(resumed)
    assert_same_tensors(whole, resumed, {n for n in whole if not n.startswith(SECOND)} - {f"save_counter{VALUE}"})
    seventh = all_tensors(str(runs.ema / "ckpt-7"))
    for name in averaged_names(whole):
        np.testing.assert_array_equal(resumed[SECOND + name], seventh[RAW + name])
    assert int(resumed[f"{SECOND}num_updates{VALUE}"]) == 1


def test_resume_with_the_moving_average_turned_off(runs, tmp_path, corpus, model_file):
    """The training weights saved beside the average are restored: training goes on as in the
    run that never had a moving average."""
    copy_checkpoints(runs.ema, 5, tmp_path / "off")
    process = train(model_file, run_config(tmp_path, corpus, "off", max_step=6))
    assert re.search(r"Moving average: off; took the training weights of 50 variables from \S*off/ckpt-5, not its "
                     r"model weights \(the moving average of decay 0.45\)", process.stderr)
    base, resumed = all_tensors(str(runs.base / "ckpt-6")), all_tensors(str(tmp_path / "off" / "ckpt-6"))
    assert set(base) == set(resumed)
    assert_same_tensors(base, resumed)


def test_checkpoint_path_to_an_older_checkpoint(runs, tmp_path, corpus, model_file):
    config = run_config(tmp_path, corpus, "older", max_step=4, **EMA)
    process = train(model_file, config, "--continue_from_checkpoint", checkpoint_path=runs.ema / "ckpt-3")
    lines = [line for line in process.stderr.splitlines() if "Moving average" in line]
    assert re.search(r"Moving average: restored the training weights and the averages \(decay 0.45: 1 update, "
                     r"decay 0.25: 1 update\) from \S*ema/ckpt-3$", lines[0])
    assert not any("ckpt-8" in line for line in lines)
    assert_same_tensors(all_tensors(str(runs.ema / "ckpt-4")), all_tensors(str(tmp_path / "older" / "ckpt-4")))


def test_checkpoint_path_without_continue_starts_from_the_training_weights(runs, tmp_path, corpus, model_file):
    config = run_config(tmp_path, corpus, "new", max_step=1, moving_average_decay=0.45)
    process = train(model_file, config, checkpoint_path=runs.ema)
    assert re.search(r"Moving average: took the training weights from \S*ema/ckpt-8 \(--checkpoint_path without "
                     r"--continue_from_checkpoint: a new run\); the averages start from them", process.stderr)
    last, new = all_tensors(str(runs.ema / "ckpt-8")), all_tensors(str(tmp_path / "new" / "ckpt-1"))
    assert int(new[f"optimizer/iter{VALUE}"]) == 1
    averaged = averaged_names(last)
    # Adam's first update moves each weight by at most the learning rate (0.01): from the
    # training weights, not from the average, which is further away.
    assert max(np.abs(new[RAW + n] - last[RAW + n]).max() for n in averaged) <= 0.01 * (1 + 1e-6)
    assert max(np.abs(new[RAW + n] - last[n]).max() for n in averaged) > 0.011
    for name in averaged:  # the average starts with a copy
        np.testing.assert_array_equal(new[name], new[RAW + name])


def test_freeze_layers_changed_restores_by_name(runs, tmp_path, corpus, model_file):
    """Freezing the first encoder layer takes 16 variables out of the average and moves the
    position of those after it: each average still goes to its own variable."""
    copy_checkpoints(runs.ema, 5, tmp_path / "frozen")
    config = run_config(tmp_path, corpus, "frozen", max_step=7, params={"freeze_layers": ["encoder/layers/0"]}, **EMA)
    process = train(model_file, config)
    assert re.search(r"Moving average: \S*frozen/ckpt-5 holds averages of 16 variables that are no longer averaged; "
                     r"ignored: model/encoder/layers/0/", process.stderr)
    fifth, seventh = all_tensors(str(runs.ema / "ckpt-5")), all_tensors(str(tmp_path / "frozen" / "ckpt-7"))
    frozen = [n for n in averaged_names(fifth) if n.startswith("model/encoder/layers/0/")]
    averaged = averaged_names(seventh)
    assert len(frozen) == 16 and set(averaged) == set(averaged_names(fifth)) - set(frozen)
    for name in frozen:  # their training weights, kept as they are
        np.testing.assert_array_equal(seventh[name], fifth[RAW + name])
        assert SECOND + name not in seventh
    for name in averaged:  # step 7 updates with d_7^2 = min(d, 8 / 17)^2
        raw = seventh[RAW + name].astype(np.float64)
        for prefix, decay in (("", 0.45), (SECOND, 0.25)):
            before = fifth[prefix + name].astype(np.float64)
            expected = before - (before - raw) * (1 - min(decay, 8 / 17) ** 2)
            np.testing.assert_allclose(seventh[prefix + name], expected, rtol=1e-5, atol=1e-7, err_msg=name)


def test_bad_moving_average_decay_is_refused(tmp_path, corpus, model_file):
    config = run_config(tmp_path, corpus, "run", max_step=5, moving_average_decay=[0.999, 0.999])
    process = onmt_main("--model", model_file, "--config", config, "train", check=False)
    assert_refused(process, "train.moving_average_decay must be a list of distinct decays (0.999 is given twice), "
                            "got [0.999, 0.999]")
