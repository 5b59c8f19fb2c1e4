"""Where an average goes: into an existing output directory without losing a file (through real
``onmt-main average_checkpoints`` and the tool), and the staging directories of dead runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import opennmt
import pytest
import tensorflow as tf

from conftest import TINY_MODEL, data_config, onmt_main, tool, write_yaml
from onmt_trainkit import averaging, output
from onmt_trainkit.moving_average import variable_names
from test_averaging import VALUE, build, tree_digest, write_run

# ---- onmt-main average_checkpoints into an existing directory ------------------------------


@pytest.fixture(scope="module")
def onmt_run(tmp_path_factory, corpus):
    """An OpenNMT-tf model directory: the tiny Transformer's real checkpoints at steps 10, 20,
    30 (random weights, written by OpenNMT-tf's Checkpoint in this process) and its config."""
    root = tmp_path_factory.mktemp("onmt")
    model_dir = root / "run"
    model_dir.mkdir()
    (model_dir / "model_description.py").write_text(TINY_MODEL)
    namespace: dict = {}
    exec(TINY_MODEL, namespace)
    model = namespace["model"]()
    data = data_config(corpus)
    model.initialize(data, params={"optimizer": "Adam", "learning_rate": 0.001})
    optimizer = model.get_optimizer()
    model.create_variables(optimizer=optimizer)
    checkpoint = opennmt.utils.checkpoint.Checkpoint(model, optimizer=optimizer, model_dir=str(model_dir))
    rng = np.random.default_rng(3)
    weights = {}
    for step in (10, 20, 30):
        for variable in model.trainable_variables:
            variable.assign(rng.normal(size=variable.shape).astype(np.float32))
        optimizer.iterations.assign(step)
        checkpoint.save(step)
        weights[step] = {v.name: v.numpy() for v in model.trainable_variables}
    config = write_yaml(root / "config.yml", {
        "model_dir": str(model_dir), "data": data,
        "params": {"optimizer": "Adam", "learning_rate": 0.001},
    })
    return {"config": config, "model_dir": str(model_dir), "model": model, "optimizer": optimizer}


def model_tensors(prefix: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(prefix)
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
            if n.startswith("model/") and "OPTIMIZER_SLOT" not in n}


def mean_of(model_dir: str, steps) -> dict[str, np.ndarray]:
    tensors = [model_tensors(os.path.join(model_dir, f"ckpt-{s}")) for s in steps]
    return {n: np.mean([t[n].astype(np.float64) for t in tensors], axis=0).astype(tensors[0][n].dtype)
            for n in tensors[0] if tensors[0][n].dtype == np.float32}


def assert_average(prefix: str, model_dir: str, steps) -> None:
    expected = mean_of(model_dir, steps)
    actual = model_tensors(prefix)
    assert expected and set(expected) <= set(actual)
    for name, value in expected.items():
        np.testing.assert_array_equal(actual[name], value, err_msg=name)


def test_onmt_main_adds_to_a_directory_with_a_foreign_file_and_keeps_it(onmt_run, tmp_path):
    output_dir = tmp_path / "avg"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_text("my notes")
    (output_dir / "eval").mkdir()
    (output_dir / "eval" / "scores.txt").write_text("bleu 30")
    process = onmt_main("--config", onmt_run["config"], "average_checkpoints", "--output_dir", str(output_dir),
                        "--max_count", "2")
    assert f"Saved averaged checkpoint to {output_dir}/ckpt-30" in process.stderr
    assert (output_dir / "notes.txt").read_text() == "my notes"
    assert (output_dir / "eval" / "scores.txt").read_text() == "bleu 30"
    assert tf.train.latest_checkpoint(str(output_dir)) == str(output_dir / "ckpt-30")
    assert_average(str(output_dir / "ckpt-30"), onmt_run["model_dir"], [20, 30])


def test_onmt_main_path_refuses_to_replace_a_checkpoint_beside_a_foreign_file(onmt_run, tmp_path):
    """What onmt-main average_checkpoints and train.average_last_checkpoints call, in this process."""
    from opennmt.utils import checkpoint as checkpoint_util

    output_dir = tmp_path / "avg"
    averaging.average_checkpoints(onmt_run["model_dir"], str(output_dir), averaging.Selection(max_count=1))
    (output_dir / "notes.txt").write_text("my notes")
    before = tree_digest(output_dir)
    trackables = {"model": onmt_run["model"], "optimizer": onmt_run["optimizer"]}
    with pytest.raises(averaging.OutputError) as error:
        checkpoint_util.average_checkpoints(onmt_run["model_dir"], str(output_dir), trackables, max_count=2)
    assert str(error.value) == (
        f"output directory {output_dir} holds notes.txt, which is not part of an average, so "
        f"{output_dir}/ckpt-30.data-00000-of-00001 in it may not be replaced: choose another output "
        "directory, or move them away")
    assert tree_digest(output_dir) == before
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_onmt_main_into_a_previous_average(onmt_run, tmp_path):
    """Stock OpenNMT-tf adds the new average beside the previous one and lists both, the new one
    last; so does the plugin. A previous average of the same step is replaced."""
    output_dir = tmp_path / "avg"
    averaging.average_checkpoints(onmt_run["model_dir"], str(output_dir),
                                  averaging.Selection(max_count=2, max_step=20))
    averaging.average_checkpoints(onmt_run["model_dir"], str(output_dir), averaging.Selection(max_count=1),
                                  overwrite=True)
    assert averaging.listed_checkpoints(str(output_dir)) == [str(output_dir / "ckpt-20"), str(output_dir / "ckpt-30")]
    process = onmt_main("--config", onmt_run["config"], "average_checkpoints", "--output_dir", str(output_dir),
                        "--max_count", "3")
    assert f"Saved averaged checkpoint to {output_dir}/ckpt-30" in process.stderr
    state = tf.train.get_checkpoint_state(str(output_dir))
    assert state.model_checkpoint_path == str(output_dir / "ckpt-30")
    assert list(state.all_model_checkpoint_paths) == [str(output_dir / "ckpt-20"), str(output_dir / "ckpt-30")]
    assert sorted(os.listdir(output_dir)) == ["checkpoint", "ckpt-20.data-00000-of-00001", "ckpt-20.index",
                                              "ckpt-30.data-00000-of-00001", "ckpt-30.index",
                                              "model_description.py"]
    assert_average(str(output_dir / "ckpt-30"), onmt_run["model_dir"], [10, 20, 30])  # replaced
    assert_average(str(output_dir / "ckpt-20"), onmt_run["model_dir"], [10, 20])  # kept
    # The Transformer and its optimizer restore from it, every variable.
    model, optimizer = onmt_run["model"], onmt_run["optimizer"]
    tf.train.Checkpoint(model=model, optimizer=optimizer).restore(
        str(output_dir / "ckpt-30")).assert_existing_objects_matched()
    expected = mean_of(onmt_run["model_dir"], [10, 20, 30])
    names = variable_names(model)
    for variable in model.trainable_variables:  # each variable holds its own name's average
        np.testing.assert_array_equal(variable.numpy(), expected[names[variable.ref()] + VALUE], err_msg=variable.name)
    assert int(optimizer.iterations.numpy()) == 30


# ---- The same rule in the library and the tool ---------------------------------------------


@pytest.fixture()
def run(tmp_path):
    return str(tmp_path / "run"), write_run(tmp_path / "run")


def tool_refuses(args, message):
    process = tool("average_checkpoints.py", *args, check=False)
    assert process.returncode == 2, process.stderr
    assert process.stderr.count("\n") == 1 and "Traceback" not in process.stderr, process.stderr
    assert message in process.stderr, process.stderr


def test_tool_force_adds_beside_a_foreign_file(run, tmp_path):
    model_dir, _ = run
    output_dir = tmp_path / "avg"
    output_dir.mkdir()
    (output_dir / "precious.txt").write_text("keep me")
    tool_refuses(["--model_dir", model_dir, "--output_dir", str(output_dir)],
                 f"output directory {output_dir} exists and is not empty (use --force to add the average to it)")
    tool("average_checkpoints.py", "--model_dir", model_dir, "--output_dir", str(output_dir), "--force",
         "--max_count", "2")
    assert (output_dir / "precious.txt").read_text() == "keep me"
    assert tf.train.latest_checkpoint(str(output_dir)) == str(output_dir / "ckpt-500")
    # The same step again: ckpt-500 is not only an average's now (precious.txt is there).
    before = tree_digest(output_dir)
    tool_refuses(["--model_dir", model_dir, "--output_dir", str(output_dir), "--force"],
                 f"output directory {output_dir} holds precious.txt, which is not part of an average, so "
                 f"{output_dir}/ckpt-500.data-00000-of-00001 in it may not be replaced")
    assert tree_digest(output_dir) == before


def test_tool_force_replaces_a_previous_average_of_the_same_step(run, tmp_path):
    model_dir, saved = run
    output_dir = tmp_path / "avg"
    tool("average_checkpoints.py", "--model_dir", model_dir, "--output_dir", str(output_dir), "--max_count", "1")
    tool("average_checkpoints.py", "--model_dir", model_dir, "--output_dir", str(output_dir), "--max_count", "2",
         "--force")
    assert sorted(os.listdir(output_dir)) == ["checkpoint", "ckpt-500.data-00000-of-00001", "ckpt-500.index",
                                              "model_description.py"]
    assert averaging.listed_checkpoints(str(output_dir)) == [str(output_dir / "ckpt-500")]
    value = tf.train.load_checkpoint(str(output_dir / "ckpt-500")).get_tensor(f"model/dense{VALUE}")
    expected = ((saved[400]["dense"].astype(np.float64) + saved[500]["dense"]) / 2).astype(np.float32)
    np.testing.assert_array_equal(value, expected)
    model, optimizer = build()
    tf.train.Checkpoint(model=model, optimizer=optimizer).restore(str(output_dir / "ckpt-500")).assert_consumed()


def test_a_different_model_description_counts_as_a_file_that_would_be_lost(run, tmp_path):
    model_dir, _ = run
    output_dir = tmp_path / "avg"
    output_dir.mkdir()
    (output_dir / "model_description.py").write_text("model = 'another'\n")
    (output_dir / "README").write_text("another model")
    with pytest.raises(averaging.OutputError, match=f"so {output_dir}/model_description.py in it may not be"):
        averaging.average_checkpoints(model_dir, str(output_dir), overwrite=True)
    assert (output_dir / "model_description.py").read_text() == "model = 'another'\n"
    assert sorted(os.listdir(output_dir)) == ["README", "model_description.py"]


def test_an_invalid_checkpoint_file_in_the_output_is_not_overwritten(run, tmp_path):
    model_dir, _ = run
    output_dir = tmp_path / "avg"
    output_dir.mkdir()
    (output_dir / "checkpoint").write_text("my own notes, not a checkpoint list\n")
    with pytest.raises(averaging.OutputError, match="is not a valid checkpoint file .line 1 is not 'field: value'."):
        averaging.average_checkpoints(model_dir, str(output_dir), overwrite=True)
    assert (output_dir / "checkpoint").read_text() == "my own notes, not a checkpoint list\n"


# ---- Staging directories of dead runs --------------------------------------------------------

KILLED = textwrap.dedent(
    """
    import os, sys, time
    from onmt_trainkit import averaging

    def stop(done, total, count):
        print("averaging", flush=True)
        time.sleep(600)

    averaging.average_checkpoints(sys.argv[1], sys.argv[2], averaging.Selection(max_count=2), progress=stop)
    """
)


def test_a_killed_run_leaves_a_staging_directory_that_the_next_run_removes(run, tmp_path):
    model_dir, _ = run
    output_dir = tmp_path / "avg"
    process = subprocess.Popen([sys.executable, "-c", KILLED, model_dir, str(output_dir)], stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline() == "averaging\n"  # inside the averaging, staging made
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    host, namespace = output.host_name(), output.pid_namespace()
    left = [n for n in os.listdir(tmp_path) if n.startswith(".avg.")]
    assert len(left) == 1 and left[0].startswith(f".avg.averaging-{process.pid}.{namespace}@{host}-"), left
    assert "ckpt-500.data-00000-of-00001" in os.listdir(tmp_path / left[0])
    # A live run's staging directory (this test's process) and another
    # host's are kept; so is a directory that only looks alike.
    live = tmp_path / f".avg.averaging-{os.getpid()}.{namespace}@{host}-0123abcd"
    other_host = tmp_path / f".avg.averaging-{process.pid}.{namespace}@elsewhere-0123abcd"
    mine = tmp_path / ".avg.averaging-mine"
    for directory in (live, other_host, mine):
        directory.mkdir()

    result = tool("average_checkpoints.py", "--model_dir", model_dir, "--output_dir", str(output_dir))
    assert result.stdout.splitlines()[0] == (
        f"removed {tmp_path / left[0]}, left by process {process.pid} on {host}, which no longer runs"
    )
    assert result.stdout.splitlines()[1].startswith("averaged 5 checkpoints")
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith(".")) == sorted(
        [live.name, other_host.name, mine.name])
    assert tf.train.latest_checkpoint(str(output_dir)) == str(output_dir / "ckpt-500")


def test_staging_directories_are_named_after_their_process(tmp_path):
    staging = output.make_staging(str(tmp_path / "avg"))
    match = output.STAGING.match(os.path.basename(staging))
    assert os.path.dirname(staging) == str(tmp_path)
    assert match and match.group("output") == "avg" and int(match.group("pid")) == os.getpid()
    assert match.group("host") == output.host_name()
    assert match.group("namespace") == str(os.stat("/proc/self/ns/pid").st_ino)
    assert output.remove_dead_staging(str(tmp_path / "avg")) == []  # ours: alive
    assert os.path.isdir(staging)



def dead_pid() -> int:
    """The id of a process of this namespace that has ended."""
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def test_only_this_namespace_s_dead_staging_directories_are_removed(tmp_path):
    """Containers with host networking share the host name, not the process ids: another PID
    namespace's directory, and an old-style one without a namespace, are kept."""
    host, namespace = output.host_name(), output.pid_namespace()
    pid = dead_pid()
    dead = tmp_path / f".avg.averaging-{pid}.{namespace}@{host}-0123abcd"
    other_namespace = tmp_path / f".avg.averaging-{pid}.{int(namespace) + 1}@{host}-0123abcd"
    old_style = tmp_path / f".avg.averaging-{pid}@{host}-0123abcd"
    for directory in (dead, other_namespace, old_style):
        directory.mkdir()
        (directory / "ckpt-1.index").write_bytes(b"partial")
    assert output.remove_dead_staging(str(tmp_path / "avg")) == [
        f"removed {dead}, left by process {pid} on {host}, which no longer runs"]
    assert sorted(n for n in os.listdir(tmp_path)) == sorted([other_namespace.name, old_style.name])


@pytest.mark.parametrize("previous", [True, False], ids=["beside-another-average", "alone"])
def test_a_crash_while_replacing_an_average_leaves_only_complete_checkpoints_listed(
        run, tmp_path, monkeypatch, previous):
    """The moves of a same-step average's files are interrupted after its data file: the
    ``checkpoint`` file lists only checkpoints that TensorFlow reads, and a new run succeeds."""
    from onmt_trainkit import storage

    model_dir, saved = run
    output_dir = tmp_path / "avg"
    averaging.average_checkpoints(model_dir, str(output_dir), averaging.Selection(max_count=1))
    if previous:
        averaging.average_checkpoints(model_dir, str(output_dir), averaging.Selection(max_count=1, max_step=400),
                                      overwrite=True)
    rename = storage.rename

    def crash_at_the_index(source, destination):
        if source.endswith("ckpt-500.index"):
            raise RuntimeError("crash")
        rename(source, destination)

    monkeypatch.setattr(storage, "rename", crash_at_the_index)
    with pytest.raises(RuntimeError, match="crash"):
        averaging.average_checkpoints(model_dir, str(output_dir), averaging.Selection(max_count=2), overwrite=True)
    monkeypatch.setattr(storage, "rename", rename)
    state = tf.train.get_checkpoint_state(str(output_dir))
    if previous:
        assert list(state.all_model_checkpoint_paths) == [str(output_dir / "ckpt-400")]
        for path in state.all_model_checkpoint_paths:
            tf.train.load_checkpoint(path).get_tensor(f"model/dense{VALUE}")
    else:
        assert state is None and tf.train.latest_checkpoint(str(output_dir)) is None
    with pytest.raises(tf.errors.OpError, match="Checksum does not match"):  # what was averted
        tf.train.load_checkpoint(str(output_dir / "ckpt-500")).get_tensor(f"model/dense{VALUE}")

    averaging.average_checkpoints(model_dir, str(output_dir), averaging.Selection(max_count=2), overwrite=True)
    listed = [str(output_dir / "ckpt-400")] * previous + [str(output_dir / "ckpt-500")]
    assert averaging.listed_checkpoints(str(output_dir)) == listed
    value = tf.train.load_checkpoint(str(output_dir / "ckpt-500")).get_tensor(f"model/dense{VALUE}")
    expected = ((saved[400]["dense"].astype(np.float64) + saved[500]["dense"]) / 2).astype(np.float32)
    np.testing.assert_array_equal(value, expected)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_tool_refuses_empty_paths_and_names_an_unwritable_output(run, tmp_path, capsys):
    from onmt_trainkit.cli import average_checkpoints_main

    model_dir, _ = run
    for args, message in [
        (["--model_dir", model_dir, "--output_dir", ""], "--output_dir must be a non-empty path, got ''"),
        (["--model_dir", " ", "--output_dir", str(tmp_path / "a")], "--model_dir must be a non-empty path, got ' '"),
    ]:
        with pytest.raises(SystemExit) as status:
            average_checkpoints_main(args)
        assert status.value.code == 2
        assert capsys.readouterr().err == f"onmt-trainkit-average: error: {message}\n"
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(SystemExit) as status:
        average_checkpoints_main(["--model_dir", model_dir, "--output_dir", str(tmp_path / "file" / "sub" / "avg")])
    assert status.value.code == 2
    assert capsys.readouterr().err == (
        f"onmt-trainkit-average: error: cannot write output directory {tmp_path / 'file' / 'sub' / 'avg'}: "
        "Not a directory\n")
    assert average_checkpoints_main(["--model_dir", model_dir, "--output_dir", str(tmp_path / "one"),
                                     "--max_count", "1"]) == 0
    assert capsys.readouterr().out.startswith("averaged 1 checkpoint (step 500; ")
