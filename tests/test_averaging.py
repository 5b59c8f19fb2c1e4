"""Checkpoint averaging on checkpoints written by TensorFlow, checked with numpy and TensorFlow."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import tool
from reference import exact_bfloat16
from onmt_trainkit import averaging
from onmt_trainkit.tensor_bundle import CheckpointReader

STEPS = [100, 200, 300, 400, 500]
VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"


def build(extra: bool = False, width: int = 3):
    model = tf.Module()
    model.dense = tf.Variable(tf.zeros((4, width)), name="dense")
    model.half = tf.Variable(tf.zeros((5,), tf.float16), name="half")
    model.brain = tf.Variable(tf.zeros((3,), tf.bfloat16), name="brain")
    model.counter = tf.Variable(0, dtype=tf.int64, name="counter")
    if extra:
        model.extra = tf.Variable(tf.zeros((2,)), name="extra")
    optimizer = tf.keras.optimizers.legacy.Adam(0.1)
    trainable = [model.dense, model.half]
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in trainable])
    return model, optimizer


def write_run(directory, steps=STEPS, seed=0, **kwargs) -> dict[int, dict[str, np.ndarray]]:
    """Writes checkpoints at ``steps`` with random weights; returns the values per step."""
    rng = np.random.default_rng(seed)
    model, optimizer = build(**kwargs)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep=None)
    saved = {}
    for step in steps:
        for variable in list(model.trainable_variables) + list(optimizer.variables()):
            if variable.dtype != tf.int64:
                variable.assign(rng.normal(size=variable.shape).astype(variable.dtype.as_numpy_dtype) * 10)
        model.counter.assign(step * 7)
        optimizer.iterations.assign(step)
        manager.save(checkpoint_number=step)
        saved[step] = {
            "dense": model.dense.numpy(), "half": model.half.numpy(),
            "brain": model.brain.numpy(), "counter": model.counter.numpy(),
            "dense_m": optimizer.get_slot(model.dense, "m").numpy(),
        }
    with open(os.path.join(directory, "model_description.py"), "w") as description:
        description.write("model = None\n")
    return saved


def tree_digest(directory) -> dict[str, str]:
    digest = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as content:
                digest[os.path.relpath(path, directory)] = hashlib.sha256(content.read()).hexdigest()
    return digest


@pytest.fixture()
def run(tmp_path):
    directory = tmp_path / "run"
    saved = write_run(directory)
    return str(directory), saved


def test_average_of_the_last_checkpoints(run, tmp_path):
    model_dir, saved = run
    before = tree_digest(model_dir)
    output = str(tmp_path / "avg")
    result = averaging.average_checkpoints(model_dir, output, averaging.Selection(max_count=3))
    assert tree_digest(model_dir) == before  # inputs untouched
    assert [averaging.checkpoint_step(c) for c in result.checkpoints] == [300, 400, 500]
    assert result.step == 500 and result.checkpoint_prefix == os.path.join(output, "ckpt-500")
    assert sorted(os.listdir(output)) == ["checkpoint", "ckpt-500.data-00000-of-00001",
                                          "ckpt-500.index", "model_description.py"]

    reader = tf.train.load_checkpoint(output)
    assert tf.train.latest_checkpoint(output) == result.checkpoint_prefix
    for name, dtype in (("dense", np.float32), ("half", np.float16)):
        expected = np.mean([saved[s][name].astype(np.float64) for s in (300, 400, 500)], axis=0)
        value = reader.get_tensor(f"model/{name}{VALUE}")
        assert value.dtype == dtype
        np.testing.assert_array_equal(value, expected.astype(dtype))
    brain = reader.get_tensor(f"model/brain{VALUE}")
    assert brain.dtype == tf.bfloat16.as_numpy_dtype
    expected = [exact_bfloat16([saved[s]["brain"][i] for s in (300, 400, 500)]) for i in range(3)]
    assert list(brain.view(np.uint16)) == expected
    # Integer tensors, the step and optimizer slots come from the newest checkpoint.
    assert reader.get_tensor(f"model/counter{VALUE}") == 3500
    assert reader.get_tensor(f"optimizer/iter{VALUE}") == 500
    np.testing.assert_array_equal(
        reader.get_tensor(f"model/dense/.OPTIMIZER_SLOT/optimizer/m{VALUE}"), saved[500]["dense_m"]
    )


@pytest.mark.parametrize("count", [1, 2, 3])
def test_tensors_read_in_several_pieces(tmp_path, count):
    # 4 x 70,001 float32 is 1.07 MiB: more than two of the averager's 512 KiB pieces, the
    # last one partial; 1, 2 and 3 checkpoints split unevenly between its two threads.
    saved = write_run(tmp_path / "run", width=70_001)
    output = str(tmp_path / "avg")
    averaging.average_checkpoints(str(tmp_path / "run"), output, averaging.Selection(max_count=count))
    expected = np.mean([saved[s]["dense"].astype(np.float64) for s in STEPS[-count:]], axis=0)
    value = tf.train.load_checkpoint(output).get_tensor(f"model/dense{VALUE}")
    np.testing.assert_array_equal(value, expected.astype(np.float32))


def test_output_restores_a_model_and_its_optimizer(run, tmp_path):
    model_dir, saved = run
    output = str(tmp_path / "avg")
    averaging.average_checkpoints(model_dir, output, averaging.Selection(max_count=2))
    model, optimizer = build()
    status = tf.train.Checkpoint(model=model, optimizer=optimizer).restore(tf.train.latest_checkpoint(output))
    status.assert_consumed()
    expected = ((saved[400]["dense"].astype(np.float64) + saved[500]["dense"]) / 2).astype(np.float32)
    np.testing.assert_array_equal(model.dense.numpy(), expected)
    assert int(optimizer.iterations.numpy()) == 500


def test_drop_optimizer(run, tmp_path):
    model_dir, _ = run
    output = str(tmp_path / "avg")
    averaging.average_checkpoints(model_dir, output, averaging.Selection(max_count=2), drop_optimizer=True)
    names = set(tf.train.load_checkpoint(output).get_variable_to_shape_map())
    assert not [n for n in names if "OPTIMIZER_SLOT" in n or n.startswith("optimizer/")]
    model, optimizer = build()
    tf.train.Checkpoint(model=model, optimizer=optimizer).restore(
        tf.train.latest_checkpoint(output)).assert_nontrivial_match()
    assert int(optimizer.iterations.numpy()) == 1  # as built: nothing restored into it
    assert int(model.counter.numpy()) == 3500


def test_explicit_list_and_step_range(run, tmp_path):
    model_dir, _ = run
    listed = [os.path.join(model_dir, f"ckpt-{s}") for s in (500, 100)]
    result = averaging.average_checkpoints(None, str(tmp_path / "a"), averaging.Selection(checkpoints=listed))
    assert [averaging.checkpoint_step(c) for c in result.checkpoints] == [100, 500]
    result = averaging.average_checkpoints(
        model_dir, str(tmp_path / "b"), averaging.Selection(min_step=200, max_step=400))
    assert [averaging.checkpoint_step(c) for c in result.checkpoints] == [200, 300, 400]


def write_metrics(model_dir, values: dict[int, dict[str, float]]):
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "eval"))
    with writer.as_default():
        for step, metrics in values.items():
            for name, value in metrics.items():
                tf.summary.scalar(f"metrics/{name}", value, step=step)
    writer.flush()
    writer.close()


def test_best_checkpoints_by_metric(run, tmp_path):
    model_dir, _ = run
    write_metrics(model_dir, {
        100: {"bleu": 10.0, "loss": 3.0}, 200: {"bleu": 30.0, "loss": 2.5},
        300: {"bleu": 20.0, "loss": 2.0}, 400: {"bleu": 25.0, "loss": 2.2}, 500: {"bleu": 5.0, "loss": 2.1},
    })
    best = averaging.select_checkpoints(model_dir, averaging.Selection(best=2, metric="bleu"))
    assert [averaging.checkpoint_step(c) for c in best] == [200, 400]
    best = averaging.select_checkpoints(model_dir, averaging.Selection(best=2, metric="loss"))
    assert [averaging.checkpoint_step(c) for c in best] == [300, 500]
    with pytest.raises(averaging.AveragingError, match="--metric 'chrf' was not recorded during training; recorded: bleu, loss"):
        averaging.select_checkpoints(model_dir, averaging.Selection(best=2, metric="chrf"))


def test_progress_reports_bytes_read(run, tmp_path):
    model_dir, _ = run
    calls = []
    averaging.average_checkpoints(model_dir, str(tmp_path / "avg"), averaging.Selection(max_count=4),
                                  progress=lambda done, total, count: calls.append((done, total, count)))
    done = [d for d, _, _ in calls]
    assert done == sorted(done) and calls[-1][0] == calls[-1][1]
    assert {count for _, _, count in calls} == {4}
    assert calls[-1][1] == 4 * (4 * 3 * 4 + 5 * 2 + 3 * 2)  # 4 checkpoints of float32, float16, bfloat16


def test_memory_does_not_grow_with_the_number_of_checkpoints(tmp_path):
    """One tensor at a time: averaging 8 checkpoints of a 32 MB tensor allocates no more than
    averaging 2 (measured with tracemalloc, which sees numpy buffers and read buffers)."""
    import tracemalloc

    model_dir = tmp_path / "big"
    model = tf.Module()
    model.weight = tf.Variable(tf.zeros((2048, 4096)))
    checkpoint = tf.train.Checkpoint(model=model)
    manager = tf.train.CheckpointManager(checkpoint, str(model_dir), max_to_keep=None)
    for step in range(1, 9):
        model.weight.assign(tf.fill(model.weight.shape, float(step)))
        manager.save(checkpoint_number=step)
    peaks = {}
    for count in (2, 8):
        tracemalloc.start()
        averaging.average_checkpoints(str(model_dir), str(tmp_path / f"avg{count}"),
                                      averaging.Selection(max_count=count))
        peaks[count] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    tensor_bytes = 2048 * 4096 * 4
    assert peaks[8] <= peaks[2] * 1.1
    # Two float64 half sums, two read buffers and the output: 7 tensors' bytes, whatever N.
    assert peaks[8] <= 7.5 * tensor_bytes
    assert tf.train.load_checkpoint(str(tmp_path / "avg8")).get_tensor(f"model/weight{VALUE}")[0, 0] == 4.5


# ---- The command line: refusals exit 2 with one line and write nothing ----------------

def refuse(args, message, watch):
    before = {d: sorted(os.listdir(d)) for d in watch}
    digests = {d: tree_digest(d) for d in watch}
    process = tool("average_checkpoints.py", *args, check=False)
    assert process.returncode == 2, process.stderr
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in process.stderr, process.stderr
    assert lines[0].startswith("onmt-trainkit-average: error: ")
    assert message in lines[0], lines[0]
    assert process.stdout == ""
    for directory in watch:
        assert sorted(os.listdir(directory)) == before[directory]
        assert tree_digest(directory) == digests[directory]


def test_cli_success_is_quiet_and_says_what_it_did(run, tmp_path):
    model_dir, _ = run
    process = tool("average_checkpoints.py", "--model_dir", model_dir, "--output_dir", str(tmp_path / "avg"),
                   "--max_count", "2")
    assert process.stderr == ""
    assert process.stdout.strip() == (
        f"averaged 2 checkpoints (steps 400, 500; 3 weights) into {tmp_path / 'avg' / 'ckpt-500'}"
    )


def test_cli_shows_progress_on_a_terminal(run, tmp_path):
    model_dir, _ = run
    output = tmp_path / "avg"
    command = f"onmt-trainkit-average --model_dir {model_dir} --output_dir {output} --max_count 2"
    process = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True,
                             env=dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]))
    screen = process.stdout.decode()
    assert process.returncode == 0, screen
    assert "\r2 checkpoints: read " in screen and "(100%)" in screen
    assert f"averaged 2 checkpoints (steps 400, 500; 3 weights) into {output}/ckpt-500" in screen


@pytest.mark.parametrize(
    "args,message",
    [
        (["--output_dir", "{run}"], "is the model directory"),
        (["--output_dir", "{tmp}"], "contains the checkpoints to average"),
        (["--max_count", "0"], "--max_count must be >= 1, got 0"),
        (["--min_step", "400", "--max_step", "300"], "--min_step must be <= --max_step, got 400 > 300"),
        (["--min_step", "600"], "no checkpoint is within --min_step/--max_step"),
        (["--best", "2"], "--best and --metric go together"),
        (["--best", "2", "--metric", "bleu"], "--best needs evaluations recorded during training"),
        (["--max_count", "two"], "argument --max_count: invalid int value: 'two'"),
    ],
)
def test_cli_refusals(run, tmp_path, args, message):
    model_dir, _ = run
    args = [a.format(run=model_dir, tmp=str(tmp_path)) for a in args]
    if "--output_dir" not in args:
        args += ["--output_dir", str(tmp_path / "avg")]
    refuse(["--model_dir", model_dir, *args], message, [model_dir, str(tmp_path)])


def test_cli_refuses_missing_or_empty_model_directories(tmp_path):
    refuse(["--model_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "avg")],
           f"model directory {tmp_path / 'nope'} does not exist", [str(tmp_path)])
    (tmp_path / "empty").mkdir()
    refuse(["--model_dir", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "avg")],
           f"model directory {tmp_path / 'empty'} has no checkpoint", [str(tmp_path)])
    refuse(["--output_dir", str(tmp_path / "avg")], "give --model_dir or --checkpoints", [str(tmp_path)])


def test_cli_refuses_checkpoints_that_disagree(tmp_path):
    write_run(tmp_path / "a", steps=[100])
    write_run(tmp_path / "b", steps=[200], extra=True)
    write_run(tmp_path / "c", steps=[300], width=5)
    a, b, c = (str(tmp_path / n / f"ckpt-{s}") for n, s in (("a", 100), ("b", 200), ("c", 300)))
    watch = [str(tmp_path / n) for n in "abc"] + [str(tmp_path)]
    refuse(["--checkpoints", a, b, "--output_dir", str(tmp_path / "avg")],
           f"checkpoints disagree: model/extra{VALUE} is in {b} but not in {a}", watch)
    refuse(["--checkpoints", a, c, "--output_dir", str(tmp_path / "avg")],
           f"checkpoints disagree: model/dense{VALUE} is float32 [4, 5] in {c} but float32 [4, 3] in {a}", watch)
    refuse(["--checkpoints", a, str(tmp_path / "a" / "ckpt-7"), "--output_dir", str(tmp_path / "avg")],
           f"checkpoint {tmp_path / 'a' / 'ckpt-7'} not found", watch)


@pytest.mark.parametrize("damage", ["flip_data", "flip_slot", "truncate_data", "truncate_index", "garbage_index"])
def test_cli_refuses_corrupt_checkpoints(run, tmp_path, damage):
    model_dir, _ = run
    prefix = os.path.join(model_dir, "ckpt-500")
    data_path, index_path = prefix + ".data-00000-of-00001", prefix + ".index"
    reader = CheckpointReader(prefix)
    # A model weight (averaged), or an optimizer slot (copied from the newest checkpoint).
    slot = "/.OPTIMIZER_SLOT/optimizer/m" if damage == "flip_slot" else ""
    entry = reader.entries[f"model/dense{slot}{VALUE}"]
    reader.close()
    if damage in ("flip_data", "flip_slot"):
        with open(data_path, "r+b") as data:
            data.seek(entry.offset + 3)
            byte = data.read(1)
            data.seek(entry.offset + 3)
            data.write(bytes([byte[0] ^ 0xFF]))
        message = f"checkpoint {prefix} is corrupt: checksum mismatch for model/"
    elif damage == "truncate_data":
        with open(data_path, "r+b") as data:
            data.truncate(entry.offset + 5)
        message = f"checkpoint {prefix} is truncated"
    elif damage == "truncate_index":
        with open(index_path, "r+b") as index:
            index.truncate(os.path.getsize(index_path) // 2)
        message = f"{index_path} is not a TensorFlow checkpoint index"
    else:
        size = os.path.getsize(index_path)
        with open(index_path, "r+b") as index:
            index.seek(10)
            index.write(b"\xff" * 20)
        assert os.path.getsize(index_path) == size
        message = f"{index_path} is corrupt"
    refuse(["--model_dir", model_dir, "--output_dir", str(tmp_path / "avg")], message,
           [model_dir, str(tmp_path)])


def test_cli_refuses_a_missing_data_file(run, tmp_path):
    model_dir, _ = run
    os.remove(os.path.join(model_dir, "ckpt-500.data-00000-of-00001"))
    refuse(["--model_dir", model_dir, "--output_dir", str(tmp_path / "avg")],
           "missing data file", [model_dir, str(tmp_path)])


def test_copy_of_a_run_elsewhere_still_resolves_relative_paths(run, tmp_path):
    model_dir, _ = run
    moved = tmp_path / "moved"
    shutil.copytree(model_dir, moved)
    result = averaging.average_checkpoints(str(moved), str(tmp_path / "avg"), averaging.Selection(max_count=1))
    assert result.checkpoints == [os.path.join(str(moved), "ckpt-500")]
