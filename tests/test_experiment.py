"""The experiment pipeline on a few hundred lines and a handful of steps."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import sacrebleu
import sentencepiece
import yaml

from conftest import ROOT, tool
import toy_corpus
from experiments import runner, translation as experiment
from onmt_trainkit import checkpoint_state


def test_experiment_pipeline_runs_and_resumes(tmp_path, model_file):
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    for split, count, seed in (("train", 300, 0), ("dev", 120, 1), ("test", 120, 2)):
        paths = toy_corpus.write_corpus(str(tmp_path / split), num_train=count, num_test=1, seed=seed)
        for side in ("src", "tgt"):
            os.replace(paths[f"train_{side}"], corpus_dir / f"{split}.{side}")
    args = ["--corpus", str(corpus_dir), "--budget", "quick", "--max_step", "6", "--vocab_size", "40",
            "--model", model_file, "--recipes", "noam_ema_avg",
            "--work_dir", str(tmp_path / "work"), "--results_dir", str(tmp_path / "results")]
    first = tool("experiment.py", *args, "--progress_every", "1")
    assert "300 train, 100 dev, 100 test pairs; 1 recipe x 1 seed, 6 updates each" in first.stdout  # quick caps
    assert "training noam_ema-seed1" in first.stdout
    # Reported while it trains (its evaluation and exit take seconds after the last step).
    assert re.search(r"noam_ema-seed1: step [1-6] of 6", first.stdout), first.stdout
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert set(results["runs"]) == {"noam_ema-seed1"}
    assert set(results["scores"]) == {"noam_ema_avg-seed1"}
    # The scores are sacrebleu's on the predictions decoded (SentencePiece) against the raw references.
    (spm,) = glob.glob(str(tmp_path / "work" / "**" / "*.model"), recursive=True)
    processor = sentencepiece.SentencePieceProcessor(model_file=spm)
    predictions = (tmp_path / "work" / "predictions" / "noam_ema_avg-seed1.sp").read_text().splitlines()
    hypotheses = [processor.decode(line.split()) for line in predictions]
    references = (corpus_dir / "test.tgt").read_text().splitlines()[:len(hypotheses)]
    assert len(hypotheses) == 100
    score = results["scores"]["noam_ema_avg-seed1"]
    assert (score["bleu"], score["chrf"]) == (round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2),
                                              round(sacrebleu.corpus_chrf(hypotheses, [references]).score, 2))
    assert set(results["runs"]["noam_ema-seed1"]["dev_loss"]) == {"6"}
    rates = results["runs"]["noam_ema-seed1"]["learning_rate"]  # logged at every step, still warming up
    assert sorted(int(step) for step in rates) == [1, 2, 3, 4, 5, 6]
    assert all(rates[str(step)] < rates[str(step + 1)] for step in range(1, 6))
    table = (tmp_path / "results" / "results.md").read_text().splitlines()
    assert len(table) == 3 and table[2].startswith("| Noam + EMA + average | 1 |")
    assert (tmp_path / "results" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # Run again: nothing is trained or translated again.
    second = tool("experiment.py", *args)
    assert "training" not in second.stdout and "translating" not in second.stdout
    assert json.loads((tmp_path / "results" / "results.json").read_text())["scores"] == results["scores"]
    # Other settings in the same work directory are refused; nothing is lost.
    before = (tmp_path / "work" / "results.json").read_bytes()
    changed = tool("experiment.py", *args, "--max_step", "7", check=False)
    assert changed.returncode == 2 and changed.stdout == ""
    assert changed.stderr.strip().splitlines()[-1].endswith(
        "holds results of other settings (max_step differ); give another --work_dir, or remove it to start again")
    assert len(changed.stderr.strip().splitlines()) == 1
    assert (tmp_path / "work" / "results.json").read_bytes() == before
    # So is other data (a test sentence changed): one line, before anything is written.
    sentences = (corpus_dir / "test.src").read_text().splitlines()
    (corpus_dir / "test.src").write_text("\n".join(["changed " + sentences[0], *sentences[1:]]) + "\n")
    other = tool("experiment.py", *args, check=False)
    assert other.returncode == 2 and other.stdout == ""
    assert other.stderr == (f"experiment.py: error: {tmp_path / 'work' / 'results.json'} holds results of other data "
                            "(sha256 differ); give another --work_dir, or remove it to start again\n")
    assert (tmp_path / "work" / "results.json").read_bytes() == before


def test_a_running_command_reports_progress_and_a_failure_names_its_log(tmp_path):
    work = experiment.Experiment(str(tmp_path), experiment.Settings(), log=print, progress_every=0.2)
    script = ("import time\n"
              "print('INFO Step = 100 ; steps/s = 1.0', flush=True)\n"
              "print('INFO Step = 200 ; steps/s = 1.0', flush=True)\n"
              "time.sleep(1.5)\n")
    waits = []
    work.execute([sys.executable, "-c", script], "progress.log", on_wait=lambda *wait: waits.append(wait))
    log_path = str(tmp_path / "logs" / "progress.log")
    assert len(waits) >= 2 and set(waits) == {(log_path, 0)}
    assert runner.last_logged_step(log_path) == 200
    # A second command on the same log (a resumed run): its progress starts after the first's.
    size, waits = os.path.getsize(log_path), []
    work.execute([sys.executable, "-c", "import time; time.sleep(1)"], "progress.log",
                 on_wait=lambda *wait: waits.append(wait))
    assert set(waits) == {(log_path, size)} and runner.last_logged_step(log_path, size) is None
    (tmp_path / "logs" / "empty.log").write_text("starting\n")
    assert runner.last_logged_step(str(tmp_path / "logs" / "empty.log")) is None
    with pytest.raises(RuntimeError, match=f"failed; see {tmp_path}/logs/failing.log"):
        work.execute([sys.executable, "-c", "raise SystemExit(3)"], "failing.log")


def _gone(pid: int, seconds: float = 10.0) -> bool:
    """Whether process ``pid`` has ended (or is only left to be reaped) within ``seconds``."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def _onmt_main_naming(text: str) -> int | None:
    """The process id of an ``onmt-main`` whose command line contains ``text``, if any."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                arguments = cmdline.read().split(b"\0")
        except OSError:
            continue
        if any(b"onmt-main" in argument for argument in arguments[:2]) and text.encode() in b" ".join(arguments):
            return int(pid)
    return None


def test_stop_terminates_the_running_commands_and_starts_no_other(tmp_path):
    work = experiment.Experiment(str(tmp_path), experiment.Settings(), log=print, progress_every=0.1)
    pid_file = tmp_path / "pid"
    script = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n"
    errors = []

    def run() -> None:
        try:
            work.execute([sys.executable, "-c", script], "long.log")
        except RuntimeError as error:
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    while not pid_file.exists() or not pid_file.read_text():
        time.sleep(0.05)
    work.stop()
    thread.join(timeout=10)
    assert not thread.is_alive() and _gone(int(pid_file.read_text()))
    assert len(errors) == 1 and "failed; see" in str(errors[0])
    with pytest.raises(RuntimeError, match="stopped"):
        work.execute([sys.executable, "-c", "open('started', 'w')"], "after.log")
    assert not (tmp_path / "logs" / "after.log").exists()


@pytest.mark.parametrize("hangup", ["stops", "ignored"])
def test_sigterm_and_sighup_stop_the_experiment_and_its_training_runs(tmp_path, model_file, hangup):
    # A closed terminal (SIGHUP) stops it as SIGTERM does; under nohup (SIGHUP ignored from the
    # start) it goes on, and SIGTERM stops it.
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    for split in ("train", "dev", "test"):
        for side in ("src", "tgt"):
            (corpus_dir / f"{split}.{side}").write_text("a b c\nb c d\n" * 20)
    work_dir = str(tmp_path / "work")
    command = [sys.executable, os.path.join(ROOT, "tools", "experiment.py"), "--corpus", str(corpus_dir),
               "--budget", "quick", "--max_step", "100000", "--vocab_size", "10", "--model", model_file,
               "--recipes", "constant,warmup_linear", "--work_dir", work_dir]
    nohup = (lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)) if hangup == "ignored" else None
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore"),
                               preexec_fn=nohup)
    training = None
    for _ in range(600):
        training = _onmt_main_naming(work_dir)
        if training is not None or process.poll() is not None:
            break
        time.sleep(0.1)
    assert training is not None, process.communicate()[0]
    process.send_signal(signal.SIGHUP)
    if hangup == "ignored":
        time.sleep(2)
        assert process.poll() is None and not _gone(training, seconds=0)
        process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 130, output
    assert "stopped; finished runs and scores are kept: run the same command again to resume" in output
    assert _gone(training)
    assert output.count(" training ") == 1, output  # the waiting run did not start


@pytest.mark.parametrize("budget, published", [("hour", "de-en"), ("long", "de-en-long")])
def test_the_committed_results_are_those_of_their_command(tmp_path, budget, published):
    # `--budget BUDGET` accepts (and would resume) the committed results: same settings, all cells.
    saved = os.path.join(ROOT, "experiments", published, "results.json")
    shutil.copyfile(saved, tmp_path / "results.json")
    settings = experiment.Settings(**experiment.BUDGETS[budget])
    work = experiment.Experiment(str(tmp_path), settings)
    recipes = [r.name for r in experiment.recipes(1e-3, 10, 8, 0.9, 3)]
    assert sorted(work.results["scores"]) == sorted(f"{r}-seed{s}" for r in recipes for s in settings.seeds)


def test_the_table_gives_mean_and_spread_over_seeds():
    recipes = experiment.recipes(peak=1e-3, warmup=10, model_dim=8, ema=0.9, average=3)
    results = {
        "runs": {"noam-seed1": {"dev_loss": {"50": 5.0, "100": 4.0}},
                 "noam-seed2": {"dev_loss": {"50": 5.5, "100": 4.5}}},
        "scores": {"noam-seed1": {"recipe": "noam", "seed": 1, "bleu": 10.0, "chrf": 30.0},
                   "noam-seed2": {"recipe": "noam", "seed": 2, "bleu": 12.0, "chrf": 33.0},
                   "noam_avg-seed1": {"recipe": "noam_avg", "seed": 1, "bleu": 11.0, "chrf": 31.0}},
    }
    table = experiment.table(results, recipes).splitlines()
    # sd of (10, 12) = sqrt(2) = 1.41; of (30, 33) = 2.12; dev loss (4.0 + 4.5) / 2 at step 100
    assert table[2:] == ["| Noam warmup + decay | 2 | 11.00 ± 1.41 | 31.5 ± 2.1 | 4.25 |",
                         "| Noam + average of the last 3 checkpoints | 1 | 11.00 | 31.0 | – |"]


def test_recipes_that_differ_after_training_share_its_run():
    recipes = experiment.recipes(peak=1e-3, warmup=10, model_dim=8, ema=0.9, average=3)
    tasks = runner.training_tasks((1, 2), recipes)
    assert list(tasks) == [(seed, training) for seed in (1, 2)
                           for training in ("constant", "noam", "noam_ema", "warmup_linear")]
    assert [r.name for r in tasks[(2, "noam")]] == ["noam", "noam_avg"]
    assert [r.name for r in tasks[(1, "noam_ema")]] == ["noam_ema", "noam_ema_avg"]


def test_ding_extraction(tmp_path):
    ding = tmp_path / "de-en"
    ding.write_text(
        "# header :: ignored\n"
        "Haus {n} | Das Haus ist alt. | Ein Satz hier. :: house | The house is old. | One sentence here.\n"
        "Baum {m} | Der Baum ist hoch. :: tree\n"  # sides not aligned
        "Kurz. :: Short.\n"  # fewer than three words
        "Das Haus ist alt. :: The house is old.\n"  # a duplicate
    )
    assert experiment.read_ding(str(ding)) == [
        ("Das Haus ist alt.", "The house is old."), ("Ein Satz hier.", "One sentence here.")]


def test_a_copy_of_the_checkpoints_up_to_a_step_resumes_as_a_stopped_run(tmp_path):
    """copy_checkpoints against TensorFlow's CheckpointManager: what it keeps, lists and prunes."""
    import tensorflow as tf

    weight = tf.Variable(0.0)
    source, copy = tmp_path / "source", tmp_path / "copy"
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(weight=weight), str(source), max_to_keep=3)
    for step in (2, 4, 6, 8):
        weight.assign(float(step))
        manager.save(checkpoint_number=step)
    original = {name: (source / name).read_bytes() for name in os.listdir(source)}
    state = tf.train.get_checkpoint_state(str(source))
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-4", "ckpt-6", "ckpt-8"]
    (tmp_path / "copy.copying").mkdir()  # what an interrupted copy leaves
    (tmp_path / "copy.copying" / "ckpt-2.index").write_text("stale")

    runner.copy_checkpoints(source, 6, copy)
    assert sorted(os.listdir(tmp_path)) == ["copy", "source"]
    copied = tf.train.get_checkpoint_state(str(copy))
    assert [os.path.basename(p) for p in copied.all_model_checkpoint_paths] == ["ckpt-4", "ckpt-6"]
    assert os.path.basename(copied.model_checkpoint_path) == "ckpt-6"
    assert list(copied.all_model_checkpoint_timestamps) == list(state.all_model_checkpoint_timestamps[:2])
    assert copied.last_preserved_timestamp == state.last_preserved_timestamp
    assert tf.train.load_checkpoint(str(copy / "ckpt-6")).get_tensor("weight/.ATTRIBUTES/VARIABLE_VALUE") == 6.0

    # A run resumed there saves 8 and 10 and prunes its oldest, the copied ckpt-4; the source is
    # untouched.
    resumed = tf.train.CheckpointManager(tf.train.Checkpoint(weight=weight), str(copy), max_to_keep=3)
    for step in (8, 10):
        resumed.save(checkpoint_number=step)
    listed = tf.train.get_checkpoint_state(str(copy)).all_model_checkpoint_paths
    assert [os.path.basename(p) for p in listed] == ["ckpt-6", "ckpt-8", "ckpt-10"]
    assert not [name for name in os.listdir(copy) if name.startswith("ckpt-4.")]
    assert {name: (source / name).read_bytes() for name in os.listdir(source)} == original

    with pytest.raises(ValueError, match=f"{re.escape(str(copy))} exists already"):
        runner.copy_checkpoints(source, 6, copy)
    with pytest.raises(ValueError, match=r"source/checkpoint lists no checkpoint up to step 3"):
        runner.copy_checkpoints(source, 3, tmp_path / "early")
    assert sorted(os.listdir(tmp_path)) == ["copy", "source"]


def test_a_checkpoint_file_with_save_times_reads_in_tensorflow_as_written(tmp_path):
    import tensorflow as tf

    text = checkpoint_state.format_state("ckpt-9", ["ckpt-9", "ckpt-3", "ckpt-6"], [1.5, 2.25, 1e9 + 0.125],
                                         np.float64(0.5))
    (tmp_path / "checkpoint").write_text(text)
    state = tf.train.get_checkpoint_state(str(tmp_path))
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-3", "ckpt-6", "ckpt-9"]
    assert list(state.all_model_checkpoint_timestamps) == [1.5, 2.25, 1e9 + 0.125]
    assert state.last_preserved_timestamp == 0.5
    parsed = checkpoint_state.parse(text.encode())
    assert parsed.all_model_checkpoint_timestamps == [1.5, 2.25, 1e9 + 0.125]
    assert parsed.last_preserved_timestamp == 0.5
    with pytest.raises(ValueError, match="3 checkpoints listed, 2 timestamps"):
        checkpoint_state.format_state("ckpt-9", ["ckpt-3", "ckpt-6"], [1.0, 2.0])


def test_a_work_directory_in_use_is_refused_and_nothing_runs(tmp_path, model_file):
    # Another process holds the work directory (an experiment running there): the command is
    # refused before it reads or writes anything, naming that process; the run refuses too.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"lock = open({str(tmp_path / '.lock')!r}, 'a+'); fcntl.flock(lock, fcntl.LOCK_EX)\n"
         "lock.write(str(os.getpid())); lock.flush(); print('held', flush=True); time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    message = (f"{tmp_path} is in use by another experiment (process {holder.pid}); wait for it to end, or give "
               "another --work_dir")
    try:
        assert holder.stdout.readline() == "held\n"
        refused = tool("experiment.py", "--task", "g2p", "--budget", "quick", "--work_dir", str(tmp_path),
                       "--model", model_file, check=False)
        assert refused.returncode == 2 and refused.stdout == ""
        assert refused.stderr == f"experiment.py: error: {message}\n"
        work = experiment.Experiment(str(tmp_path), experiment.Settings(), log=print)
        with pytest.raises(runner.WorkDirInUse, match=re.escape(message)):
            work.run({"train": [], "dev": [], "test": []}, [])
        assert sorted(os.listdir(tmp_path)) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    # Free again: held, it names this process; released, it names none.
    with runner.only_user(str(tmp_path)):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
    assert (tmp_path / ".lock").read_text() == ""


def test_a_report_is_not_written_over_results_it_would_drop(tmp_path):
    settings = {"max_step": 100, "peak": 0.002, "seeds": [1, 2, 3]}
    committed = {"settings": settings, "runs": {"noam-seed1": {}, "wsd-seed1": {}},
                 "scores": {"noam-seed1": {}, "noam_ema-seed1": {}}}
    (tmp_path / "results.json").write_text(json.dumps(committed))
    path = tmp_path / "results.json"
    partial = {"settings": {**settings, "seeds": [1]}, "runs": {"noam-seed1": {}}, "scores": {"noam-seed1": {}}}
    assert runner.report_conflict(str(tmp_path), partial) == (
        f"{path} records 2 runs or scores that this work directory has not (wsd-seed1, noam_ema-seed1)")
    more = {**committed, "runs": {**committed["runs"], "cosine-seed1": {}}}
    assert runner.report_conflict(str(tmp_path), more) is None
    other = {**more, "settings": {**settings, "peak": 0.004}}
    assert runner.report_conflict(str(tmp_path), other) == f"{path} holds results of other settings (peak differ)"
    path.write_text("{")
    assert runner.report_conflict(str(tmp_path), more).startswith(f"{path} cannot be read (")
    assert runner.report_conflict(str(tmp_path / "none"), partial) is None


def test_results_of_other_data_are_not_resumed(tmp_path):
    # Another corpus (or another version of it) in the same work directory: refused before
    # anything is written, naming what differs; the recorded results are kept.
    splits = {"train": [("a b", "x y")], "dev": [("a", "x")], "test": [("b", "y")]}
    recorded = runner.data_record(splits)
    text = '{"dev": [["a", "x"]], "test": [["b", "y"]], "train": [["a b", "x y"]]}'
    assert recorded == {"sha256": hashlib.sha256(text.encode()).hexdigest(), "dev_size": 1, "test_size": 1,
                        "train_size": 1}
    (tmp_path / "results.json").write_text(json.dumps({"settings": runner.recorded(experiment.Settings()),
                                                       "runs": {}, "scores": {}, "data": recorded}))
    before = (tmp_path / "results.json").read_bytes()
    work = experiment.Experiment(str(tmp_path), experiment.Settings(), log=print)
    other = {**splits, "train": [("a b", "x y"), ("b a", "y x")]}
    with pytest.raises(runner.OtherData, match=f"^{tmp_path / 'results.json'} holds results of other data "
                                               r"\(sha256, train_size differ\); give another --work_dir"):
        work.run(other, [])
    assert (tmp_path / "results.json").read_bytes() == before
    assert not (tmp_path / "data").exists()


def test_a_started_run_is_not_resumed_with_another_configuration(tmp_path):
    # A run with a checkpoint, started with a configuration that this version would write
    # otherwise (here: another peak and max_step): refused, and the saved configuration kept.
    work = experiment.Experiment(str(tmp_path), experiment.Settings(max_step=10), log=print)
    recipe = experiment.recipes(peak=1e-3, warmup=2, model_dim=8, ema=0.9, average=3)[0]
    paths = {name: str(tmp_path / name) for name in ("train_src", "train_tgt", "dev_src", "dev_tgt", "vocab")}
    config = work.training_config(recipe, 1, paths)
    saved = {**config, "params": {**config["params"], "learning_rate": 5.0},
             "train": {**config["train"], "max_step": 20}}
    config_path = work.config_path(recipe, 1)
    os.makedirs(os.path.dirname(config_path))
    with open(config_path, "w", encoding="utf-8") as output:
        yaml.safe_dump(saved, output)
    before = open(config_path, encoding="utf-8").read()
    os.makedirs(config["model_dir"])
    with open(os.path.join(config["model_dir"], "checkpoint"), "w", encoding="utf-8") as state:
        state.write('model_checkpoint_path: "ckpt-4"\nall_model_checkpoint_paths: "ckpt-4"\n')
    with pytest.raises(RuntimeError, match=re.escape(
            f"constant-seed1 was started with another configuration ({config_path}: params.learning_rate, "
            "train.max_step differ from what this version gives it); resuming would go on with another recipe: "
            f"remove {config['model_dir']} to train the run again from the start")):
        work.train(recipe, 1, paths)
    assert open(config_path, encoding="utf-8").read() == before
    assert runner.changed_keys({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 1, "c": 4}, "e": 5}) == ["a.c", "d", "e"]
