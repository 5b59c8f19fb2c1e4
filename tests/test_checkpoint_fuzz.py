"""Corrupted copies of a model directory that TensorFlow writes (a small synthetic module of
float32, float16, bfloat16, int64 and string variables with Adam slots, not a trained OpenNMT-tf
model): every one ends in exit 2 with one clear line and nothing written, or in exit 0 with an
output that TensorFlow restores completely, holding the exact average of the checkpoints the
tool says it averaged."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import traceback

import numpy as np
import pytest
import tensorflow as tf

from onmt_trainkit.cli import average_checkpoints_main
from reference import exact_bfloat16
from test_averaging import VALUE, build

STEPS = (100, 200, 300)
CASES = 300
SEED = 1234
VOCABULARY = ["<unk>", "hello", "wörld"]


def build_model():
    model, optimizer = build()
    model.vocabulary = tf.Variable(VOCABULARY)
    return model, optimizer


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Three checkpoints of float32, float16, bfloat16, int64 and string variables with Adam
    slots, their object graph, model_description.py and the checkpoint file."""
    directory = tmp_path_factory.mktemp("fuzz") / "run"
    rng = np.random.default_rng(0)
    model, optimizer = build_model()
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=optimizer), str(directory),
                                         max_to_keep=None)
    saved = {}
    for step in STEPS:
        for variable in list(model.trainable_variables) + list(optimizer.variables()):
            if variable.dtype not in (tf.int64, tf.string):
                variable.assign(rng.normal(size=variable.shape).astype(variable.dtype.as_numpy_dtype) * 10)
        model.counter.assign(step)
        optimizer.iterations.assign(step)
        manager.save(checkpoint_number=step)
        saved[step] = {name: getattr(model, name).numpy() for name in ("dense", "half", "brain")}
    (directory / "model_description.py").write_text("model = None\n")
    return directory, saved


def corrupt(path: str, rng: np.random.Generator) -> str:
    """Damages file ``path`` in place; returns what was done."""
    with open(path, "rb") as original:
        data = bytearray(original.read())
    kind = rng.choice(["flip", "truncate", "zero", "varint", "varint_inserted", "garbage"])
    position = int(rng.integers(0, max(len(data), 1)))
    if kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            bit = int(rng.integers(0, 8 * len(data)))
            data[bit // 8] ^= 1 << (bit % 8)
    elif kind == "truncate":
        del data[position:]
    elif kind == "zero":
        end = min(position + int(rng.integers(1, 65)), len(data))
        data[position:end] = bytes(end - position)
    elif kind == "varint":
        data[position : position + 11] = b"\xff" * 10 + b"\x01"
    elif kind == "varint_inserted":
        data[position:position] = b"\xff" * 10 + b"\x01"
    else:
        data[position : position + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
    with open(path, "wb") as damaged:
        damaged.write(bytes(data))
    return f"{kind} at {position} of {os.path.basename(path)}"


def average(argv: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = average_checkpoints_main(argv)
        except SystemExit as exit_status:
            status = exit_status.code
    return status, stdout.getvalue(), stderr.getvalue()


def test_corrupted_model_directories(pristine, tmp_path):
    directory, saved = pristine
    files = sorted(os.listdir(directory))
    targets = [f for f in files if f != "model_description.py"]
    rng = np.random.default_rng(SEED)
    failures, outputs, refused = [], [], 0
    for case in range(CASES):
        root = tmp_path / f"case{case}"
        model_dir = root / "run"
        shutil.copytree(directory, model_dir)
        damage = corrupt(str(model_dir / targets[case % len(targets)]), rng)
        output = root / "avg"
        try:
            status, out, err = average(["--model_dir", str(model_dir), "--output_dir", str(output)])
        except Exception:  # a traceback: what this test is for
            failures.append(f"case {case} ({damage}): {traceback.format_exc(limit=-3)}")
            continue
        leftovers = sorted(n for n in os.listdir(root) if n.startswith("."))
        if status == 2:
            refused += 1
            lines = err.splitlines()
            if not (len(lines) == 1 and lines[0].startswith("onmt-trainkit-average: error: ") and out == ""
                    and not output.exists() and not leftovers):
                failures.append(f"case {case} ({damage}): exit 2 but {err!r} {out!r} {leftovers}")
        elif status == 0:
            match = re.fullmatch(r"averaged \d+ checkpoints \(steps ([\d, ]+); 3 weights\) into (\S+)\n", out)
            if match is None or err or leftovers:
                failures.append(f"case {case} ({damage}): exit 0 but {out!r} {err!r} {leftovers}")
            else:
                steps = [int(s) for s in match.group(1).split(", ")]
                outputs.append((case, damage, match.group(2), steps))
        else:
            failures.append(f"case {case} ({damage}): exit {status}: {err!r}")
    assert not failures, "\n".join(failures)

    # Every exit-0 output restores completely (every variable gets a value, every value a
    # variable), with the exact average of what it says it averaged.
    model, optimizer = build_model()
    for case, damage, prefix, steps in outputs:
        try:
            tf.train.Checkpoint(model=model, optimizer=optimizer).restore(prefix).assert_consumed()
        except Exception as error:
            failures.append(f"case {case} ({damage}): {prefix} does not restore: {error}")
            continue
        for name in ("dense", "half"):
            expected = np.mean([saved[s][name].astype(np.float64) for s in steps], axis=0)
            if not np.array_equal(getattr(model, name).numpy(), expected.astype(saved[steps[0]][name].dtype)):
                failures.append(f"case {case} ({damage}): wrong {name}")
        brain = list(model.brain.numpy().view(np.uint16))
        if brain != [exact_bfloat16([saved[s]["brain"][i] for s in steps]) for i in range(3)]:
            failures.append(f"case {case} ({damage}): wrong brain")
        if [v.decode() for v in model.vocabulary.numpy()] != VOCABULARY or model.counter.numpy() != steps[-1]:
            failures.append(f"case {case} ({damage}): wrong vocabulary or counter")
        reader = tf.train.load_checkpoint(prefix)
        np.testing.assert_array_equal(reader.get_tensor(f"optimizer/iter{VALUE}"), steps[-1])
    assert not failures, "\n".join(failures)
    assert refused > CASES // 2 and outputs  # both outcomes are exercised
