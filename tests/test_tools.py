"""The command-line tools as a user meets them: --help quick (before numpy or TensorFlow is
imported), named as installed, with examples; the demo's output directory."""

from __future__ import annotations

import os
import sys

import pytest

import demo  # tools/demo.py
from conftest import BIN, ROOT, run, write_yaml
from onmt_trainkit.cli import plot_schedule_main

# What --help prints it under: the installed command's name (the checkout's script too), or the script's.
TOOLS = {
    os.path.join(ROOT, "tools", "average_checkpoints.py"): "onmt-trainkit-average",
    os.path.join(BIN, "onmt-trainkit-average"): "onmt-trainkit-average",
    os.path.join(ROOT, "tools", "plot_schedule.py"): "onmt-trainkit-plot",
    os.path.join(BIN, "onmt-trainkit-plot"): "onmt-trainkit-plot",
    os.path.join(ROOT, "tools", "demo.py"): "demo.py",
    os.path.join(ROOT, "tools", "experiment.py"): "experiment.py",
}

HELP = """
import os, runpy, sys
sys.argv = [sys.argv[1], "--help"]
sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as python SCRIPT does
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as stop:
    heavy = sorted(name for name in ("numpy", "tensorflow", "opennmt", "yaml") if name in sys.modules)
    print("EXIT", stop.code, "IMPORTED", ",".join(heavy) or "-")
"""


@pytest.mark.parametrize("path", sorted(TOOLS), ids=lambda p: os.path.relpath(p, ROOT))
def test_help_answers_before_numpy_and_tensorflow(path):
    process = run([sys.executable, "-c", HELP, path])
    lines = process.stdout.splitlines()
    assert lines[0].startswith(f"usage: {TOOLS[path]} ")
    assert "examples:" in lines
    exit_line = lines[-1].split()
    assert exit_line[:2] == ["EXIT", "0"]
    assert "numpy" not in exit_line[3] and "tensorflow" not in exit_line[3], exit_line


def test_demo_refuses_a_directory_it_did_not_make(tmp_path):
    keep = tmp_path / "mine" / "notes.txt"
    keep.parent.mkdir()
    keep.write_text("mine")
    process = run([sys.executable, os.path.join(ROOT, "tools", "demo.py"), "--output_dir", str(keep.parent)],
                  check=False)
    assert process.returncode == 2
    assert process.stderr == (f"demo.py: error: --output_dir {keep.parent} is not empty and was not made by the "
                              "demo; give another directory, or --force to replace everything in it\n")
    assert process.stdout == "" and keep.read_text() == "mine" and os.listdir(keep.parent) == ["notes.txt"]


def test_demo_replaces_its_own_directory_and_with_force_any(tmp_path):
    out = tmp_path / "demo"
    demo._prepare(str(out), force=False)  # made: empty but for its marker
    assert os.listdir(out) == [demo.MARKER]
    (out / "train.log").write_text("an earlier demo")
    demo._prepare(str(out), force=False)
    assert os.listdir(out) == [demo.MARKER]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    demo._prepare(str(other), force=True)
    assert os.listdir(other) == [demo.MARKER]


@pytest.mark.parametrize("args,message", [
    (["--max_step", "5"], "demo.py: error: --max_step must be an integer >= 10, got 5\n"),
    (["--max_step", "x"], "demo.py: error: argument --max_step: invalid int value: 'x'\n"),
])
def test_demo_refuses_bad_arguments_in_one_line(tmp_path, args, message):
    out = tmp_path / "out"
    process = run([sys.executable, os.path.join(ROOT, "tools", "demo.py"), "--output_dir", str(out), *args],
                  check=False)
    assert (process.returncode, process.stderr) == (2, message)
    assert not out.exists()


def test_the_plot_tool_warns_of_a_misspelt_key(tmp_path, capsys):
    config = write_yaml(tmp_path / "run.yml", {"params": {"learning_rate": 1e-3, "warmup_step": 10}})
    assert plot_schedule_main(["--config", config, "--max_step", "20", "--csv", str(tmp_path / "lr.csv")]) == 0
    assert capsys.readouterr().err == (
        "onmt-trainkit-plot: warning: unknown key params.warmup_step (did you mean warmup_steps?): neither OpenNMT-tf "
        "2.32 nor onmt-trainkit reads it (a model of your own that reads it can say so: "
        "onmt_trainkit.keys.declare('params.warmup_step'))\n")


@pytest.mark.parametrize("where", ["checkout", "cwd", "root"])
def test_demo_never_replaces_what_holds_the_checkout_or_the_current_directory(tmp_path, where, monkeypatch):
    target = {"checkout": os.path.dirname(ROOT), "cwd": str(tmp_path), "root": "/"}[where]
    (tmp_path / "keep.txt").write_text("kept")
    monkeypatch.chdir(tmp_path)

    def refuse_to_delete(path, *args, **kwargs):  # should the guard fail, nothing is deleted
        raise AssertionError(f"the demo would have deleted {path}")

    monkeypatch.setattr(demo.shutil, "rmtree", refuse_to_delete)
    with pytest.raises(SystemExit) as stop:
        demo._prepare(os.path.realpath(target), force=True)
    assert stop.value.code == 2
    assert (tmp_path / "keep.txt").read_text() == "kept" and os.path.isdir(ROOT)
