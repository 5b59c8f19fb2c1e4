"""Real Horovod: two CPU processes launched by ``horovodrun --gloo`` train with the plugin.

Each launch runs ``onmt-main ... train --horovod --with_eval`` on a tiny Transformer with a
warmup schedule and the moving average. Every rank gets its own ``--model_dir``
(``rank0``, ``rank1``): rank 1 never reads nor writes its model directory (OpenNMT-tf only
builds checkpoints, summaries and the evaluator on rank 0), so ``rank1`` must not exist
afterwards, and anything it wrote would show there. The model file records, on each rank, the
weights each training step computes its gradients from (the result of the previous step's
allreduce and update), so the ranks can be compared step by step.

The training file has two sentences: each rank's shard is one sentence, every batch of a rank
is that sentence, and a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import time

import numpy as np
import pytest

import toy_corpus
from conftest import BIN, write_yaml
from experiments.runner import copy_checkpoints
from onmt_trainkit import protowire
from test_end_to_end import VALUE, all_tensors, model_weights

HOROVODRUN = os.path.join(BIN, "horovodrun")
INSTALLED = importlib.util.find_spec("horovod") is not None and os.path.exists(HOROVODRUN)
REQUIRED = os.environ.get("ONMT_TRAINKIT_TEST_HOROVOD") == "required"
"""``make test`` installs Horovod and sets ``ONMT_TRAINKIT_TEST_HOROVOD=required``: these tests then
fail, not skip, without it; run by hand without Horovod, they skip with the reason."""
pytestmark = pytest.mark.skipif(
    not INSTALLED and not REQUIRED,
    reason="Horovod is not installed (make test installs it: pip install '.[distributed]', see the Makefile)",
)


def test_horovod_is_installed():
    assert INSTALLED, "ONMT_TRAINKIT_TEST_HOROVOD=required but Horovod or horovodrun is missing from this environment"

TIME_LIMIT = 300
"""Seconds a launch may take before it is stopped as hung (one takes about a minute on 2 busy cores)."""

DECAY = 0.9
MAX_STEP = 16
RESUME_STEP = 8
AVERAGED = 3
EVAL_STEPS = 8
TENSOR_CONTENT = 4
"""The field of TensorFlow's ``TensorProto`` that holds the values' bytes."""

RECORDING_MODEL = """
import faulthandler
import json
import os
import signal

import opennmt
import tensorflow as tf

import onmt_trainkit

faulthandler.register(signal.SIGUSR1)  # the test asks a hung rank where it is
RECORD_DIR = os.path.join(os.environ["TRAINKIT_TEST_RECORD_DIR"], "rank" + os.environ["HOROVOD_RANK"])


class RecordingTransformer(opennmt.models.Transformer):
    \"\"\"Writes, at each step, the trainable weights the gradients are computed from.\"\"\"

    def compute_gradients(self, features, labels, optimizer, **kwargs):
        result = super().compute_gradients(features, labels, optimizer, **kwargs)
        _describe(self)
        # Graph operations only: the weights as one vector, in step<optimizer.iterations>.pb.
        path = tf.strings.join([RECORD_DIR, "/step", tf.strings.as_string(optimizer.iterations), ".pb"])
        weights = tf.concat([tf.reshape(v, [-1]) for v in self.trainable_variables], axis=0)
        tf.io.write_file(path, tf.io.serialize_tensor(weights))
        return result


@tf.autograph.experimental.do_not_convert
def _describe(model):
    \"\"\"Writes variables.json: each trainable variable's checkpoint keys and shape, in order.\"\"\"
    keys = {}
    for key, variable in opennmt.utils.misc.get_variables_name_mapping(model, "model").items():
        keys.setdefault(variable.ref(), []).append(key)
    os.makedirs(RECORD_DIR, exist_ok=True)
    with open(os.path.join(RECORD_DIR, "variables.json"), "w") as output:
        json.dump([{"keys": keys[v.ref()], "shape": v.shape.as_list()} for v in model.trainable_variables], output)


def model():
    return RecordingTransformer(
        source_inputter=opennmt.inputters.WordEmbedder(embedding_size=16),
        target_inputter=opennmt.inputters.WordEmbedder(embedding_size=16),
        num_layers=1, num_units=16, num_heads=2, ffn_inner_dim=32,
        dropout=0.0, attention_dropout=0.0, ffn_dropout=0.0,
    )
"""


# Where the checkpoint keeps the moving average: the one place to change with its layout.
def training_weights(tensors: dict[str, np.ndarray], keys: list[str]) -> dict[str, np.ndarray]:
    """The training weights saved beside the average, by model key (``keys``: the trainable
    variables' keys, in the model's order)."""
    if any(name.startswith("moving_average/raw/") for name in tensors):
        return {key: tensors[f"moving_average/raw/{key}"] for key in keys}
    return {key: tensors[f"moving_average/weights/{index}{VALUE}"] for index, key in enumerate(keys)}


def average_updates(tensors: dict[str, np.ndarray]) -> int:
    """The number of updates applied to the average in ``model/``."""
    (count,) = [int(value) for name, value in tensors.items()
                if name.startswith("moving_average/") and name.endswith(f"num_updates{VALUE}")]
    return count


def launch(command: str, log_path: str, record_dir: str) -> str:
    """Runs ``command`` (a shell command, with ``$HOROVOD_RANK``) as two Horovod ranks.

    Returns the output of both ranks (each line prefixed ``[rank]<stream>:``). On a failure or
    after :data:`TIME_LIMIT` seconds, stops horovodrun and every process it started, then fails.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore",
               TRAINKIT_TEST_RECORD_DIR=record_dir)
    with open(log_path, "w") as log:
        process = subprocess.Popen([HOROVODRUN, "-np", "2", "-H", "localhost:2", "--gloo", "sh", "-c", command],
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
    returncode = None
    try:
        returncode = process.wait(timeout=TIME_LIMIT)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if process.poll() is None:
            stop(process)
    with open(log_path) as log:
        output = log.read()
    if returncode is None:
        raise AssertionError(f"the ranks did not finish within {TIME_LIMIT} s:\n{output[-8000:]}")
    if returncode != 0:
        raise AssertionError(f"horovodrun exited {returncode}:\n{output[-8000:]}")
    return output


def stop(process: subprocess.Popen) -> None:
    """Stops horovodrun and the processes it started (its ranks run in sessions of their own),
    after asking each rank for its Python stack."""
    import psutil  # a dependency of Horovod

    descendants = []
    with contextlib.suppress(psutil.Error):
        descendants = psutil.Process(process.pid).children(recursive=True)
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            if any("onmt-main" in part for part in child.cmdline()):
                child.send_signal(signal.SIGUSR1)  # the model file registered faulthandler for it
    time.sleep(2)
    process.send_signal(signal.SIGINT)  # horovodrun terminates its ranks
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.kill()  # psutil checks that the pid still names the same process


def rank_log(output: str, rank: int) -> str:
    return "\n".join(line.split(":", 1)[1] for line in output.splitlines() if line.startswith(f"[{rank}]<"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run of MAX_STEP steps, and a run resumed from a copy of its checkpoints
    up to RESUME_STEP (as a run stopped there leaves them) to MAX_STEP."""
    root = tmp_path_factory.mktemp("horovod")
    corpus = toy_corpus.write_corpus(str(root / "data"), num_train=2, num_test=2)
    model_file = root / "recording_model.py"
    model_file.write_text(RECORDING_MODEL)
    result = {"root": root, "logs": {}}
    for name in ("whole", "resumed"):
        if name == "resumed":
            copy_checkpoints(root / "whole" / "rank0", RESUME_STEP, root / name / "rank0")
        config = write_yaml(root / f"{name}.yml", {
            "data": {
                "train_features_file": corpus["train_src"], "train_labels_file": corpus["train_tgt"],
                "eval_features_file": corpus["test_src"], "eval_labels_file": corpus["test_tgt"],
                "source_vocabulary": corpus["src_vocab"], "target_vocabulary": corpus["tgt_vocab"],
            },
            "params": {"optimizer": "Adam", "learning_rate": 0.01, "warmup_steps": 8,
                       "decay_type": "PolynomialDecay",
                       "decay_params": {"decay_steps": MAX_STEP, "end_learning_rate": 0.001}},
            "train": {"batch_size": 1, "batch_type": "examples", "max_step": MAX_STEP,
                      "save_checkpoints_steps": 1, "keep_checkpoint_max": 100, "save_summary_steps": 6,
                      "moving_average_decay": DECAY,
                      "average_last_checkpoints": AVERAGED if name == "whole" else 0},
            "eval": {"steps": EVAL_STEPS, "batch_size": 2},
        })
        command = " ".join([
            shlex.quote(os.path.join(BIN, "onmt-main")), "--model", shlex.quote(str(model_file)),
            "--config", shlex.quote(config),
            "--model_dir", shlex.quote(str(root / name)) + '/rank"$HOROVOD_RANK"',
            "--seed", "3", "train", "--horovod", "--with_eval",
        ])
        result["logs"][name] = launch(f"exec {command}", str(root / f"{name}.log"), str(root / f"{name}-records"))
    return result


def recorded(records: str, checkpoint_names) -> dict[int, dict[str, np.ndarray]]:
    """One rank's recorded weights: {step: {model key: value}} (the weights after that step)."""
    with open(os.path.join(records, "variables.json")) as variables:
        layout = json.load(variables)
    keys = [next(k for k in variable["keys"] if k in checkpoint_names) for variable in layout]
    weights = {}
    for name in os.listdir(records):
        match = re.fullmatch(r"step(\d+)\.pb", name)
        if match:
            with open(os.path.join(records, name), "rb") as serialized:  # a TensorProto
                content = protowire.first(list(protowire.fields(serialized.read())), TENSOR_CONTENT)
            flat = np.frombuffer(content, "<f4")
            values, offset = {}, 0
            for key, variable in zip(keys, layout):
                size = int(np.prod(variable["shape"]))
                values[key] = flat[offset:offset + size].reshape(variable["shape"])
                offset += size
            assert offset == flat.size
            weights[int(match.group(1))] = values
    return weights


def checkpoint(runs, name: str, step: int) -> dict[str, np.ndarray]:
    return all_tensors(str(runs["root"] / name / "rank0" / f"ckpt-{step}"))


def trainable_keys(runs, name: str) -> list[str]:
    names = set(checkpoint(runs, name, 1))
    with open(runs["root"] / f"{name}-records" / "rank0" / "variables.json") as variables:
        return [next(k for k in variable["keys"] if k in names) for variable in json.load(variables)]


def test_only_rank_zero_writes_and_evaluates(runs):
    root = runs["root"]
    for name in ("whole", "resumed"):
        assert not (root / name / "rank1").exists()
        saved = sorted(int(n[5:-6]) for n in os.listdir(root / name / "rank0") if re.fullmatch(r"ckpt-\d+\.index", n))
        assert saved == list(range(1, MAX_STEP + 1))
    for name, output in runs["logs"].items():
        for rank_zero_only in ("Evaluation result for step", "Saved checkpoint", "Saved averaged checkpoint"):
            assert rank_zero_only not in rank_log(output, 1), name
    evaluated = re.findall(r"Evaluation result for step (\d+)", rank_log(runs["logs"]["whole"], 0))
    assert [int(step) for step in evaluated] == list(range(EVAL_STEPS, MAX_STEP + 1, EVAL_STEPS))
    resumed = rank_log(runs["logs"]["resumed"], 0)
    assert re.search(rf"Moving average: restored the training weights.*\b{RESUME_STEP} updates", resumed)


@pytest.mark.parametrize("name", ["whole", "resumed"])
def test_ranks_compute_their_gradients_from_identical_weights(runs, name):
    names = set(checkpoint(runs, name, 1))
    records = runs["root"] / f"{name}-records"
    rank0, rank1 = recorded(str(records / "rank0"), names), recorded(str(records / "rank1"), names)
    # A fresh run's step 0 is the initialization, before the first broadcast; a resumed run's
    # first is RESUME_STEP, after it (a rank that starts it at step 0 has not received rank 0's
    # state). The last step starts no other.
    first = 0 if name == "whole" else RESUME_STEP
    for rank, weights in enumerate((rank0, rank1)):
        assert sorted(weights) == list(range(first, MAX_STEP)), f"rank {rank} recorded the steps {sorted(weights)}"
    for step in range(max(first, 1), MAX_STEP):
        for key, value in rank0[step].items():
            np.testing.assert_array_equal(rank1[step][key], value, err_msg=f"step {step}: {key}")
        # What rank 0 trains on is what it saves as the training weights of that step.
        saved = training_weights(checkpoint(runs, name, step), list(rank0[step]))
        for key, value in saved.items():
            np.testing.assert_array_equal(rank0[step][key], value, err_msg=f"step {step}: {key}")


def test_checkpoints_hold_the_moving_average_of_the_training_weights(runs):
    keys = trainable_keys(runs, "whole")
    average = None
    for step in range(1, MAX_STEP + 1):
        tensors = checkpoint(runs, "whole", step)
        weights = {k: v.astype(np.float64) for k, v in training_weights(tensors, keys).items()}
        if average is None:
            average = weights
        else:
            rate = 1 - min(DECAY, (1 + step) / (10 + step))
            average = {k: average[k] - (average[k] - weights[k]) * rate for k in keys}
        for key in keys:
            np.testing.assert_allclose(tensors[key], average[key], rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
        assert average_updates(tensors) == step
    assert any(not np.allclose(tensors[k], weights[k]) for k in keys)  # the average is not the training weights


def test_resumed_run_equals_an_uninterrupted_one(runs):
    for step in range(RESUME_STEP + 1, MAX_STEP + 1):
        whole, resumed = checkpoint(runs, "whole", step), checkpoint(runs, "resumed", step)
        assert set(whole) == set(resumed)
        for name in set(whole) - {f"save_counter{VALUE}"}:  # save_counter counts this process's saves
            np.testing.assert_array_equal(resumed[name], whole[name], err_msg=f"step {step}: {name}")


def test_average_last_checkpoints_on_rank_zero(runs):
    model_dir = runs["root"] / "whole" / "rank0"
    averaged = model_weights(str(model_dir / "avg" / f"ckpt-{MAX_STEP}"))
    inputs = [model_weights(str(model_dir / f"ckpt-{step}")) for step in range(MAX_STEP - AVERAGED + 1, MAX_STEP + 1)]
    assert set(averaged) == set(inputs[0])
    for name, value in averaged.items():
        expected = np.mean([w[name].astype(np.float64) for w in inputs], axis=0).astype(np.float32)
        np.testing.assert_array_equal(value, expected, err_msg=name)
    assert f"Saved averaged checkpoint to {model_dir}/avg/ckpt-{MAX_STEP}" in rank_log(runs["logs"]["whole"], 0)
