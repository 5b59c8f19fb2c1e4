"""Checkpoints of every kind that TensorFlow writes, averaged exactly: TensorFlow 1 and other
root names, short reads, bfloat16 rounding, string tensors' checksums, several data files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
from opennmt.utils import checkpoint as checkpoint_util

from conftest import tool
from reference import exact_bfloat16
from onmt_trainkit import averaging, tensor_bundle
from onmt_trainkit import protowire as pw
from onmt_trainkit.tensor_bundle import CheckpointReader
from test_averaging import STEPS, VALUE, build, refuse, write_run

BFLOAT16 = tf.bfloat16.as_numpy_dtype

# ---- Nothing under the model key -------------------------------------------------------------


@pytest.fixture()
def tf1_run(tmp_path):
    """A TensorFlow 1 model directory: name-based checkpoints written by tf.compat.v1's Saver."""
    directory = tmp_path / "tf1"
    directory.mkdir()
    weight = tf.Variable(np.zeros((3, 4), np.float32))
    step = tf.Variable(0, dtype=tf.int64)
    saver = tf.compat.v1.train.Saver(var_list={"transformer/encoder/w": weight, "global_step": step})
    for value in (100, 200):
        weight.assign(np.full((3, 4), value, np.float32))
        step.assign(value)
        saver.save(None, str(directory / "model.ckpt"), global_step=value)
    return str(directory)


def test_tool_refuses_a_tensorflow_1_checkpoint(tf1_run, tmp_path):
    assert sorted(os.listdir(tf1_run))[:2] == ["checkpoint", "model.ckpt-100.data-00000-of-00001"]
    refuse(["--model_dir", tf1_run, "--output_dir", str(tmp_path / "avg")],
           f"nothing to average: checkpoint {tf1_run}/model.ckpt-200 has no floating-point tensor under "
           "'model/' (a TensorFlow 1 checkpoint, whose tensors are named by variable?)",
           [tf1_run, str(tmp_path)])


def test_onmt_main_path_refuses_a_tensorflow_1_checkpoint(tf1_run, tmp_path):
    model, optimizer = build()
    with pytest.raises(ValueError, match=r"nothing to average: checkpoint .*model\.ckpt-200 has no floating-point"):
        checkpoint_util.average_checkpoints(tf1_run, str(tmp_path / "avg"), {"model": model, "optimizer": optimizer})
    assert not os.path.exists(tmp_path / "avg")


@pytest.fixture()
def network_run(tmp_path):
    """Object-based checkpoints whose root object holds the model under 'network'."""
    rng = np.random.default_rng(5)
    model, optimizer = build()
    checkpoint = tf.train.Checkpoint(network=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path / "net"), max_to_keep=None)
    saved = []
    for step in (1, 2, 3):
        model.dense.assign(rng.normal(size=(4, 3)).astype(np.float32))
        manager.save(checkpoint_number=step)
        saved.append(model.dense.numpy())
    return str(tmp_path / "net"), saved, model, optimizer


def test_model_key_is_honoured(network_run, tmp_path):
    model_dir, saved, model, optimizer = network_run
    expected = np.mean(np.array(saved, np.float64), axis=0).astype(np.float32)
    output = checkpoint_util.average_checkpoints(
        model_dir, str(tmp_path / "avg"), {"network": model, "optimizer": optimizer}, model_key="network")
    value = tf.train.load_checkpoint(output).get_tensor(f"network/dense{VALUE}")
    np.testing.assert_array_equal(value, expected)
    with pytest.raises(ValueError, match="model not found in trackables"):
        checkpoint_util.average_checkpoints(model_dir, str(tmp_path / "b"), {"network": model})
    # The default key finds nothing to average under model/: refused, not copied.
    refuse(["--model_dir", model_dir, "--output_dir", str(tmp_path / "c")],
           "has no floating-point tensor under 'model/' (does the checkpoint save the model under another "
           "name than 'model'?)", [model_dir])
    process = tool(
        "average_checkpoints.py", "--model_dir", model_dir, "--output_dir", str(tmp_path / "d"),
        "--model_key", "network")
    assert "(steps 1, 2, 3; 3 weights)" in process.stdout
    np.testing.assert_array_equal(
        tf.train.load_checkpoint(str(tmp_path / "d")).get_tensor(f"network/dense{VALUE}"), expected)
    refuse(["--model_dir", model_dir, "--output_dir", str(tmp_path / "e"), "--model_key", "a/b"],
           "--model_key must be a non-empty name without '/', got 'a/b'", [model_dir])


# ---- Short reads -------------------------------------------------------------------------------


def test_short_reads_are_read_on(tmp_path, monkeypatch):
    """Reads of at most MAX_READ bytes, each of which the system cuts shorter at random, as a
    network file system does: the average is the same, exactly."""
    saved = write_run(tmp_path / "run", width=70_001)
    rng = np.random.default_rng(0)
    preadv = os.preadv
    calls = []

    def short_preadv(fd, buffers, offset):
        (view,) = buffers
        calls.append(len(view))
        return preadv(fd, [view[: int(rng.integers(1, len(view) + 1))]], offset)

    monkeypatch.setattr(tensor_bundle, "MAX_READ", 100_003)
    monkeypatch.setattr(os, "preadv", short_preadv)
    averaging.average_checkpoints(str(tmp_path / "run"), str(tmp_path / "avg"), averaging.Selection(max_count=3))
    monkeypatch.undo()
    assert max(calls) == 100_003 and len(calls) > 3 * 2 * (4 * 70_001 * 4) // 100_003
    reader = tf.train.load_checkpoint(str(tmp_path / "avg"))
    for name in ("dense", "half"):
        expected = np.mean([saved[s][name].astype(np.float64) for s in STEPS[-3:]], axis=0)
        np.testing.assert_array_equal(reader.get_tensor(f"model/{name}{VALUE}"), expected.astype(saved[500][name].dtype))
    np.testing.assert_array_equal(reader.get_tensor(f"model/dense/.OPTIMIZER_SLOT/optimizer/m{VALUE}"),
                                  saved[500]["dense_m"])


# ---- bfloat16: one rounding, checked against exact arithmetic ---------------------------------

def bf16(*values: float) -> np.ndarray:
    return np.array(values, np.float32).astype(BFLOAT16)


def test_bfloat16_average_is_rounded_once_to_nearest_even(tmp_path):
    tiny, largest = 2.0**-133, float(np.float32(bf16(3.3895e38)[0]))
    # Rows: the values of one weight in the 4 checkpoints.
    designed = [
        (2.0, 2.0 + 2**-6, 2.0**-30, 0.0),  # 1 + 2^-8 + 2^-32: float32 would make it a tie, and round to 1
        (-2.0, -2.0 - 2**-6, -(2.0**-30), 0.0),
        (1.0, 1.0 + 2**-7, 1.0, 1.0 + 2**-7),  # ties, to even
        (1.0 + 2**-7, 1.0 + 2**-6, 1.0 + 2**-7, 1.0 + 2**-6),
        (np.nan, 1.0, 2.0, 3.0), (np.inf, 1.0, 1.0, 1.0), (-np.inf, 1.0, 1.0, 1.0), (np.inf, -np.inf, 0.0, 0.0),
        (largest, largest, largest, largest), (largest, largest, -largest, largest),
        (tiny, 0.0, 0.0, 0.0), (tiny, tiny, tiny, 0.0), (3 * tiny, 0.0, 0.0, 0.0), (tiny, tiny, 0.0, 0.0),
        (2.0**-126, 2.0**-127, 0.0, 0.0), (1e30, 1e-30, -1e30, 3.0),
    ]
    rng = np.random.default_rng(11)
    random = rng.normal(size=(2000, 4)) * 10.0 ** rng.uniform(-6, 6, size=(2000, 1))
    rows = np.concatenate([np.array(designed), random]).astype(np.float32).astype(BFLOAT16)

    model = tf.Module()
    model.brain = tf.Variable(tf.zeros(len(rows), tf.bfloat16))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(tmp_path / "run"), max_to_keep=None)
    for step in range(4):
        model.brain.assign(rows[:, step])
        manager.save(checkpoint_number=step + 1)
    for count in (2, 3, 4):
        output = str(tmp_path / f"avg{count}")
        averaging.average_checkpoints(str(tmp_path / "run"), output, averaging.Selection(max_count=count))
        average = tf.train.load_checkpoint(output).get_tensor(f"model/brain{VALUE}")
        assert average.dtype == BFLOAT16
        bits = average.view(np.uint16)
        inputs = rows[:, 4 - count:].astype(np.float64)
        for row, got in zip(inputs, bits):
            expected = exact_bfloat16(list(row))
            if expected == 0x7FC0:
                assert np.isnan((np.array([got], np.uint16).astype(np.uint32) << 16).view(np.float32)[0]), row
            else:
                assert got == expected, (row, hex(got), hex(expected))
    assert bits[0] == 0x3F81  # the designed row: 1 + 2^-7, where float32 then bfloat16 gives 1.0


def test_float64_to_bfloat16_keeps_every_nan_a_nan():
    nans = np.array([0x7FF8000000000001, 0xFFFFFFFFFFFFFFFF, 0x7FF0000000000001, 0xFFF8000000000000],
                    np.uint64).view(np.float64)
    bits = tensor_bundle.float64_to_bfloat16(nans)
    assert [hex(b) for b in bits] == ["0x7fc0", "0xffc0", "0x7fc0", "0xffc0"]


# ---- String tensors: their checksums are checked -----------------------------------------------


def flip(path: str, position: int) -> None:
    with open(path, "r+b") as data:
        data.seek(position)
        byte = data.read(1)[0]
        data.seek(position)
        data.write(bytes([byte ^ 0x10]))


@pytest.mark.parametrize("where", ["length", "length_checksum", "strings", "vocabulary"])
def test_a_corrupt_string_tensor_is_refused(tmp_path, where):
    model, optimizer = build()
    model.vocabulary = tf.Variable(["<unk>", "hello", "wörld"])
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=optimizer),
                                         str(tmp_path / "run"), max_to_keep=None)
    for step in (1, 2):
        manager.save(checkpoint_number=step)
    prefix = str(tmp_path / "run" / "ckpt-2")
    reader = CheckpointReader(prefix)
    name = f"model/vocabulary{VALUE}" if where == "vocabulary" else "_CHECKPOINTABLE_OBJECT_GRAPH"
    entry = reader.entries[name]
    reader.close()
    # Good string tensors go through: the output restores, vocabulary included.
    averaging.average_checkpoints(str(tmp_path / "run"), str(tmp_path / "good"))
    restored, restored_optimizer = build()
    restored.vocabulary = tf.Variable(["", "", ""])
    tf.train.Checkpoint(model=restored, optimizer=restored_optimizer).restore(
        tf.train.latest_checkpoint(str(tmp_path / "good"))).assert_consumed()
    assert [v.decode() for v in restored.vocabulary.numpy()] == ["<unk>", "hello", "wörld"]

    with open(prefix + ".data-00000-of-00001", "rb") as data:
        data.seek(entry.offset)
        _, length_size = pw.read_varint(data.read(10), 0)
    position = {"length": 0, "length_checksum": length_size + 1}.get(where, entry.size - 2)
    flip(prefix + ".data-00000-of-00001", entry.offset + position)
    message = {
        "length": f"checkpoint {prefix} is corrupt: bad lengths in string tensor {name}",
        "length_checksum": f"checkpoint {prefix} is corrupt: checksum mismatch for the lengths of {name}",
    }.get(where, f"checkpoint {prefix} is corrupt: checksum mismatch for {name}")
    refuse(["--model_dir", str(tmp_path / "run"), "--output_dir", str(tmp_path / "avg")], message,
           [str(tmp_path / "run")])


# ---- Several data files --------------------------------------------------------------------------


def write_sharded_run(directory, steps=(100, 200, 300), seed=2) -> dict[int, dict[str, np.ndarray]]:
    """Checkpoints of the model and optimizer of :func:`build`, object-based (the object graph
    included), each split over two data files by tf.compat.v1's sharded Saver: the variables
    are on two devices, as a multi-device or multi-worker run places them."""
    model, optimizer = build()
    template = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(directory / "template" / "ckpt"))
    reader = tf.train.load_checkpoint(template)
    names = sorted(reader.get_variable_to_shape_map())
    dtypes = reader.get_variable_to_dtype_map()
    rng = np.random.default_rng(seed)
    saved = {}
    graph = tf.Graph()
    with graph.as_default():
        variables, assigns, placeholders = {}, [], {}
        for index, name in enumerate(names):
            with tf.device(f"/cpu:{index % 2}"):
                variables[name] = tf.compat.v1.Variable(reader.get_tensor(name), dtype=dtypes[name],
                                                        name=f"v{index}")
                placeholders[name] = tf.compat.v1.placeholder(dtypes[name], shape=variables[name].shape)
                assigns.append(variables[name].assign(placeholders[name]))
        saver = tf.compat.v1.train.Saver(var_list=variables, sharded=True, max_to_keep=5)
        config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
        with tf.compat.v1.Session(config=config) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            for step in steps:
                values = {}
                for name in names:
                    value = reader.get_tensor(name)
                    if dtypes[name].is_floating:
                        value = (rng.normal(size=value.shape) * 10).astype(dtypes[name].as_numpy_dtype)
                    elif name.startswith("optimizer/iter"):
                        value = np.int64(step)
                    values[name] = value
                session.run(assigns, {placeholders[n]: v for n, v in values.items()})
                saver.save(session, str(directory / "ckpt"), global_step=step, write_meta_graph=False)
                saved[step] = values
    return saved


def test_checkpoints_split_over_several_data_files(tmp_path):
    saved = write_sharded_run(tmp_path / "run")
    assert sorted(n for n in os.listdir(tmp_path / "run") if n.startswith("ckpt-300")) == [
        "ckpt-300.data-00000-of-00002", "ckpt-300.data-00001-of-00002", "ckpt-300.index"]
    reader = CheckpointReader(str(tmp_path / "run" / "ckpt-300"))
    assert {e.shard_id for e in reader.entries.values()} == {0, 1}
    reader.close()
    output = str(tmp_path / "avg")
    result = averaging.average_checkpoints(str(tmp_path / "run"), output, averaging.Selection(max_count=3))
    assert [averaging.checkpoint_step(c) for c in result.checkpoints] == [100, 200, 300]
    averaged = tf.train.load_checkpoint(output)
    for name in (f"model/dense{VALUE}", f"model/half{VALUE}"):
        expected = np.mean([saved[s][name].astype(np.float64) for s in (100, 200, 300)], axis=0)
        np.testing.assert_array_equal(averaged.get_tensor(name), expected.astype(saved[300][name].dtype))
    brain = averaged.get_tensor(f"model/brain{VALUE}").view(np.uint16)
    for index, got in enumerate(brain):
        assert got == exact_bfloat16([float(saved[s][f"model/brain{VALUE}"][index]) for s in (100, 200, 300)])
    slot = f"model/dense/.OPTIMIZER_SLOT/optimizer/m{VALUE}"
    np.testing.assert_array_equal(averaged.get_tensor(slot), saved[300][slot])
    model, optimizer = build()
    tf.train.Checkpoint(model=model, optimizer=optimizer).restore(tf.train.latest_checkpoint(output)).assert_consumed()
    assert int(optimizer.iterations.numpy()) == 300
