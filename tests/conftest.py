"""Shared fixtures: tiny corpora, model files and real ``onmt-main`` runs."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
import yaml

import toy_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)

TINY_MODEL = textwrap.dedent(
    """
    import opennmt

    import onmt_trainkit


    def model():
        return opennmt.models.Transformer(
            source_inputter=opennmt.inputters.WordEmbedder(embedding_size=16),
            target_inputter=opennmt.inputters.WordEmbedder(embedding_size=16),
            num_layers=1, num_units=16, num_heads=2, ffn_inner_dim=32,
            dropout=0.0, attention_dropout=0.0, ffn_dropout=0.0,
        )
    """
)


def run(command: list[str], cwd: str | None = None, check: bool = True, **variables: str) -> subprocess.CompletedProcess:
    """Runs a command with ``variables`` added to the environment; returns it with stdout and
    stderr as text."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore", **variables}
    process = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    if check and process.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {process.returncode}:\n{process.stdout}\n{process.stderr[-5000:]}"
        )
    return process


def onmt_main(*args: str, check: bool = True, stock: bool = False) -> subprocess.CompletedProcess:
    """Runs ``onmt-main``; with ``stock``, as stock OpenNMT-tf (``ONMT_TRAINKIT=0``)."""
    variables = {"ONMT_TRAINKIT": "0"} if stock else {}
    return run([os.path.join(BIN, "onmt-main"), *args], check=check, **variables)


def assert_refused(process: subprocess.CompletedProcess, message: str) -> None:
    """Checks that ``onmt-main`` refused a value as the plugin does: exit status 2, no
    traceback, and the last line of stderr starting with ``onmt-main: error: `` and holding
    ``message``."""
    assert process.returncode == 2, process.stderr[-3000:]
    assert "Traceback" not in process.stderr, process.stderr[-3000:]
    last = process.stderr.strip().splitlines()[-1]
    assert last.startswith("onmt-main: error: ") and message in last, last


def tool(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, os.path.join(ROOT, "tools", name), *args], check=check)


def in_process(main: Callable[[list[str]], int], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Runs a command-line tool's entry point (``main(argv)``) in this process, without a new
    interpreter: its exit status, standard output and standard error as a subprocess gives them."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(args))
        except SystemExit as stop:
            status = stop.code
    process = subprocess.CompletedProcess(list(args), status or 0, out.getvalue(), err.getvalue())
    if check and process.returncode != 0:
        raise AssertionError(f"{main.__name__} {' '.join(args)} exited {process.returncode}:\n{process.stderr}")
    return process


def write_yaml(path: str, content: dict) -> str:
    with open(path, "w", encoding="utf-8") as output:
        yaml.safe_dump(content, output)
    return str(path)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, str]:
    return toy_corpus.write_corpus(str(tmp_path_factory.mktemp("corpus")), num_train=200, num_test=10)


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("model") / "tiny.py"
    path.write_text(TINY_MODEL)
    return str(path)


def data_config(corpus: dict[str, str], single_example: bool = False) -> dict:
    """The ``data`` section; with ``single_example`` every batch is the first sentence."""
    source, target = corpus["train_src"], corpus["train_tgt"]
    if single_example:
        source, target = corpus["one_src"], corpus["one_tgt"]
    return {
        "train_features_file": source,
        "train_labels_file": target,
        "source_vocabulary": corpus["src_vocab"],
        "target_vocabulary": corpus["tgt_vocab"],
    }


@pytest.fixture(scope="session", autouse=True)
def _single_example(corpus):
    for side in ("src", "tgt"):
        with open(corpus[f"train_{side}"], encoding="utf-8") as lines:
            first = lines.readline()
        path = os.path.join(os.path.dirname(corpus["train_src"]), f"one_{side}.txt")
        with open(path, "w", encoding="utf-8") as output:
            output.write(first)
        corpus[f"one_{side}"] = path


SLOWEST_FIRST = ("test_training.py", "test_horovod.py", "test_mixed_precision.py", "test_end_to_end.py",
                 "test_quickstart.py", "test_g2p.py", "test_recipe_order.py",
                 "test_averaging_weights.py", "test_recipes.py", "test_mirrored.py")
"""The files that take longest (several ``onmt-main`` runs each): started first, so that
``pytest -n 3 --dist loadfile`` does not end on one of them while the other workers idle."""


ONMT_MODULES = ("test_averaging_weights.py", "test_end_to_end.py", "test_horovod.py", "test_mirrored.py",
                "test_mixed_precision.py", "test_quickstart.py", "test_recipe_order.py", "test_recipes.py",
                "test_training.py")
"""The files whose tests train OpenNMT-tf models or start ``onmt-main`` (marked ``onmt``)."""

ONMT_TESTS = (
    "test_onmt_main_adds_to_a_directory_with_a_foreign_file_and_keeps_it",
    "test_onmt_main_path_refuses_to_replace_a_checkpoint_beside_a_foreign_file", "test_onmt_main_into_a_previous_average",
    "test_saved_weights_follow_adam_with_learning_rate_scaled_decay", "test_checkpoints_hold_what_adam_without_decay_holds",
    "test_training_log_reports_what_decays", "test_tensorboard_has_the_weight_decay_beside_the_learning_rate",
    "test_plot_tool_gives_the_weight_decay_training_logs", "test_training_refuses_both_keys",
    "test_experiment_pipeline_runs_and_resumes", "test_a_work_directory_in_use_is_refused_and_nothing_runs",
    "test_a_started_run_is_not_resumed_with_another_configuration", "test_g2p_pipeline_runs_and_resumes",
    "test_decoding_in_one_process_gives_what_onmt_main_infer_gives",
)
"""The tests of other files that do (marked ``onmt`` too)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if os.path.basename(str(item.path)) in ONMT_MODULES or item.originalname in ONMT_TESTS:
            item.add_marker(pytest.mark.onmt)

    def rank(item: pytest.Item) -> int:
        name = os.path.basename(str(item.path))
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)
