"""Remote model directories (``gs://``, ``s3://``, ``hdfs://``...) through ``tf.io.gfile``, tested
on TensorFlow's in-memory ``ram://`` file system (so in this process), as onmt-main meets them."""

from __future__ import annotations

import itertools
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from opennmt.utils import checkpoint as checkpoint_util

from conftest import run as run_command
from onmt_trainkit import averaging, output
from onmt_trainkit.cli import average_checkpoints_main
from test_averaging import STEPS, build, write_run

_ids = itertools.count()
gfile = tf.io.gfile


@pytest.fixture()
def ram():
    """A fresh ram:// directory, removed afterwards."""
    root = f"ram://averaging{next(_ids)}"
    gfile.makedirs(root)
    yield root
    gfile.rmtree(root)


def write_remote_run(root: str, steps=STEPS, seed: int = 0) -> dict[int, dict[str, np.ndarray]]:
    """Checkpoints written by TensorFlow straight to ``root/run`` (see test_averaging.write_run)."""
    rng = np.random.default_rng(seed)
    model, optimizer = build()
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=optimizer), f"{root}/run",
                                         max_to_keep=None)
    saved = {}
    for step in steps:
        for variable in list(model.trainable_variables) + list(optimizer.variables()):
            if variable.dtype != tf.int64:
                variable.assign(rng.normal(size=variable.shape).astype(variable.dtype.as_numpy_dtype) * 10)
        optimizer.iterations.assign(step)
        manager.save(checkpoint_number=step)
        saved[step] = {"dense": model.dense.numpy(), "half": model.half.numpy()}
    with gfile.GFile(f"{root}/run/model_description.py", "w") as description:
        description.write("model = None\n")
    return saved


def assert_restores_the_average(prefix: str, saved, steps) -> None:
    model, optimizer = build()
    tf.train.Checkpoint(model=model, optimizer=optimizer).restore(prefix).assert_consumed()
    for name in ("dense", "half"):
        expected = np.mean([saved[s][name].astype(np.float64) for s in steps], axis=0)
        np.testing.assert_array_equal(getattr(model, name).numpy(), expected.astype(saved[steps[0]][name].dtype))
    assert int(optimizer.iterations.numpy()) == steps[-1]


def test_onmt_main_path_reads_and_writes_remote_directories(ram):
    saved = write_remote_run(ram)
    model, optimizer = build()
    trackables = {"model": model, "optimizer": optimizer}
    result = checkpoint_util.average_checkpoints(f"{ram}/run", f"{ram}/avg", trackables, max_count=3)
    assert result == f"{ram}/avg"
    assert sorted(gfile.listdir(f"{ram}/avg")) == ["checkpoint", "ckpt-500.data-00000-of-00001", "ckpt-500.index",
                                                    "model_description.py"]
    assert tf.train.latest_checkpoint(f"{ram}/avg") == f"{ram}/avg/ckpt-500"
    assert_restores_the_average(f"{ram}/avg/ckpt-500", saved, [300, 400, 500])
    assert sorted(gfile.listdir(ram)) == ["avg", "run"]  # no staging directory left

    # Again into the same directory, from a list: added beside the first average, listed after it.
    listed = [f"{ram}/run/ckpt-{s}" for s in (100, 200, 300, 400)]
    checkpoint_util.average_checkpoints(listed, f"{ram}/avg", trackables, max_count=2)
    state = tf.train.get_checkpoint_state(f"{ram}/avg")
    assert list(state.all_model_checkpoint_paths) == [f"{ram}/avg/ckpt-500", f"{ram}/avg/ckpt-400"]
    assert state.model_checkpoint_path == f"{ram}/avg/ckpt-400"
    assert_restores_the_average(f"{ram}/avg/ckpt-400", saved, [300, 400])
    assert_restores_the_average(f"{ram}/avg/ckpt-500", saved, [300, 400, 500])


def test_tool_reads_and_writes_remote_directories(ram, tmp_path, capsys):
    saved = write_remote_run(ram)
    # Remote to local, with the optimizer left out; remote to remote and local to remote in the
    # library (the tool refuses a ram:// output, which would vanish with its process).
    assert average_checkpoints_main(["--model_dir", f"{ram}/run", "--output_dir", str(tmp_path / "slim"),
                                     "--max_count", "2", "--drop_optimizer"]) == 0
    assert capsys.readouterr().out == (
        f"averaged 2 checkpoints (steps 400, 500; 3 weights) into {tmp_path / 'slim' / 'ckpt-500'}\n")
    names = tf.train.load_checkpoint(str(tmp_path / "slim")).get_variable_to_shape_map()
    assert not [n for n in names if n.startswith("optimizer/") or "OPTIMIZER_SLOT" in n]
    averaging.average_checkpoints(f"{ram}/run", f"{ram}/avg", averaging.Selection(max_count=2))
    assert_restores_the_average(f"{ram}/avg/ckpt-500", saved, [400, 500])
    assert average_checkpoints_main(["--model_dir", f"{ram}/run", "--output_dir", str(tmp_path / "local")]) == 0
    assert_restores_the_average(str(tmp_path / "local" / "ckpt-500"), saved, STEPS)
    assert (tmp_path / "local" / "model_description.py").read_text() == "model = None\n"
    local = write_run(tmp_path / "run")
    averaging.average_checkpoints(str(tmp_path / "run"), f"{ram}/from_local", averaging.Selection(max_count=3))
    assert_restores_the_average(f"{ram}/from_local/ckpt-500", local, [300, 400, 500])


@pytest.mark.parametrize("case", ["missing", "truncated", "ram output", "unknown scheme"])
def test_tool_refuses_remote_problems_in_one_line(ram, tmp_path, capsys, case):
    write_remote_run(ram, steps=[100, 200])
    expected = {
        "missing": f"model directory {ram}/nowhere does not exist",
        "truncated": f"checkpoint {ram}/run/ckpt-200 is truncated: ",
        "ram output": f"--output_dir {ram}/avg: ram:// lives in this process's memory, so the average would "
                      "vanish when the tool exits",
        "unknown scheme": "nosuchfs://x/run: TensorFlow has no file system for nosuchfs:// (it has ",
    }[case]
    model_dir = {"missing": f"{ram}/nowhere", "unknown scheme": "nosuchfs://x/run"}.get(case, f"{ram}/run")
    output_dir = f"{ram}/avg" if case == "ram output" else str(tmp_path / "avg")
    if case == "truncated":
        path = f"{ram}/run/ckpt-200.data-00000-of-00001"
        with gfile.GFile(path, "rb") as data:
            content = data.read()
        gfile.remove(path)  # ram:// appends to an existing file
        with gfile.GFile(path, "wb") as data:
            data.write(content[:10])
    with pytest.raises(SystemExit) as exit_status:
        average_checkpoints_main(["--model_dir", model_dir, "--output_dir", output_dir])
    assert exit_status.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"onmt-trainkit-average: error: {expected}"), captured.err
    if case == "unknown scheme":
        assert "s3:// and hdfs:// need pip install tensorflow-io)" in captured.err
    assert sorted(gfile.listdir(ram)) == ["run"] and not os.listdir(tmp_path)


def test_library_refuses_an_existing_remote_output(ram):
    write_remote_run(ram, steps=[100, 200])
    gfile.makedirs(f"{ram}/avg")
    with gfile.GFile(f"{ram}/avg/notes.txt", "w") as notes:
        notes.write("mine")
    with pytest.raises(averaging.OutputError, match=f"^output directory {ram}/avg exists and is not empty"):
        averaging.average_checkpoints(f"{ram}/run", f"{ram}/avg")
    assert sorted(gfile.listdir(ram)) == ["avg", "run"] and gfile.listdir(f"{ram}/avg") == ["notes.txt"]


def test_dead_staging_directories_are_removed_on_remote_file_systems(ram):
    write_remote_run(ram, steps=[100])
    dead = f"{ram}/.avg.averaging-999999999.{output.pid_namespace()}@{output.host_name()}-0123abcd"
    gfile.makedirs(dead)
    with gfile.GFile(f"{dead}/ckpt-100.index", "wb") as partial:
        partial.write(b"partial")
    logged = []
    averaging.average_checkpoints(f"{ram}/run", f"{ram}/avg", log=logged.append)
    assert logged == [f"removed {dead}, left by process 999999999 on {output.host_name()}, which no longer runs"]
    assert sorted(gfile.listdir(ram)) == ["avg", "run"]


def test_local_averaging_does_not_import_tensorflow(tmp_path):
    write_run(tmp_path / "run")
    code = (
        "import sys\n"
        "from onmt_trainkit.cli import average_checkpoints_main\n"
        f"assert average_checkpoints_main(['--model_dir', {str(tmp_path / 'run')!r}, '--output_dir', "
        f"{str(tmp_path / 'avg')!r}]) == 0\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    process = run_command([sys.executable, "-c", code])
    assert process.stdout.startswith("averaged 5 checkpoints")
    assert os.path.isfile(tmp_path / "avg" / "ckpt-500.index")
