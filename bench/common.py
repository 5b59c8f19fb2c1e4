"""Helpers shared by the benchmarks: data, configurations and measured subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))  # toy_corpus, shared with the demo and the tests

import toy_corpus  # noqa: E402
ONMT_MAIN = os.path.join(os.path.dirname(sys.executable), "onmt-main")

STOCK_BASE = '''import opennmt


def model():
    return opennmt.models.TransformerBase()
'''
PLUGIN_BASE = "import onmt_trainkit  # noqa: F401\n" + STOCK_BASE


def prepare(work_dir: str) -> dict[str, str]:
    """Writes a toy corpus and the Transformer-base model files (stock and plugin)."""
    paths = toy_corpus.write_corpus(os.path.join(work_dir, "data"), num_train=20000, num_test=10,
                                    vocab_size=100, min_length=10, max_length=30)
    for name, text in (("stock_model", STOCK_BASE), ("plugin_model", PLUGIN_BASE)):
        paths[name] = os.path.join(work_dir, f"{name}.py")
        with open(paths[name], "w", encoding="utf-8") as model_file:
            model_file.write(text)
    return paths


def write_config(path: str, model_dir: str, paths: dict[str, str], **train) -> str:
    config = {
        "model_dir": model_dir,
        "data": {"train_features_file": paths["train_src"], "train_labels_file": paths["train_tgt"],
                 "source_vocabulary": paths["src_vocab"], "target_vocabulary": paths["tgt_vocab"]},
        "params": {"optimizer": "Adam", "learning_rate": 1e-4},
        "train": {"batch_type": "tokens", "sample_buffer_size": 1000, **train},
    }
    with open(path, "w", encoding="utf-8") as output:
        yaml.safe_dump(config, output)
    return path


def measure(command: list[str], stock: bool = False) -> tuple[float, int, str]:
    """Runs a command; returns (wall seconds, its peak resident memory in bytes, its stderr).

    With ``stock``, the command runs with ``ONMT_TRAINKIT=0``: stock OpenNMT-tf, although the
    environment's start-up hook would activate the plugin.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore", ONMT_TRAINKIT="0" if stock else "1")
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    stderr = process.stderr.read().decode("utf-8", "replace")
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return elapsed, usage.ru_maxrss * 1024, stderr
