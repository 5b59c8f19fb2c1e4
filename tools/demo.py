#!/usr/bin/env python
"""The main job end to end on a synthetic task made on the fly (no download).

Trains a tiny Transformer with ``onmt-main`` and a plugin recipe (warmup + cosine decay to
the end of training, moving average of the weights), averages its last checkpoints with
``tools/average_checkpoints.py``, translates the test set with stock ``onmt-main infer`` on
the averaged model, and plots the schedule.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from typing import NoReturn

import toy_corpus  # tools/toy_corpus.py, beside this script
import yaml
from onmt_trainkit.cli import OneLineParser, fail

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_FILE = os.path.join(ROOT, "configs", "models", "tiny_transformer.py")


def _run(command: list[str], log_path: str) -> None:
    print("$ " + " ".join(command), flush=True)
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if process.returncode != 0:
        sys.exit(f"command failed (exit {process.returncode}); see {log_path}")


MARKER = ".onmt-trainkit-demo"
"""The file that marks an output directory as the demo's own, which a later demo replaces."""


def _refuse(message: str) -> NoReturn:
    fail("demo.py", message)


def _prepare(out: str, force: bool) -> None:
    """Empties ``out`` if the demo made it (or ``force``); refuses a non-empty directory of
    anything else, and a file."""
    if os.path.isfile(out):
        _refuse(f"--output_dir {out} is a file; give a directory")
    if os.path.isdir(out) and os.listdir(out):
        for precious, what in ((os.getcwd(), "the current directory"), (ROOT, "this checkout"),
                               (os.path.expanduser("~"), "your home directory")):
            if os.path.commonpath([out, os.path.realpath(precious)]) == out:
                _refuse(f"--output_dir {out} holds {what}; give a directory of its own, e.g. run/demo")
        if not force and not os.path.exists(os.path.join(out, MARKER)):
            _refuse(f"--output_dir {out} is not empty and was not made by the demo; give another directory, or "
                    "--force to replace everything in it")
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, MARKER), "w", encoding="utf-8").close()


def main() -> int:
    parser = OneLineParser(
        prog="demo.py", description=__doc__.splitlines()[0],
        epilog="examples:\n  make demo\n  python tools/demo.py --output_dir run/demo2 --max_step 500",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="run/demo",
                        help="Where everything goes (default: run/demo). An existing directory is replaced only "
                             "if an earlier demo made it, or with --force.")
    parser.add_argument("--max_step", type=int, default=1500, help="Training steps (default: 1500).")
    parser.add_argument("--force", action="store_true", help="Replace a non-empty --output_dir that the demo "
                                                             "did not make.")
    args = parser.parse_args()
    if args.max_step < 10:
        _refuse(f"--max_step must be an integer >= 10, got {args.max_step}")
    out = os.path.realpath(args.output_dir)
    _prepare(out, args.force)
    data = toy_corpus.write_corpus(os.path.join(out, "data"), num_train=5000, num_test=100)
    model_dir = os.path.join(out, "model")
    config = {
        "model_dir": model_dir,
        "data": {
            "train_features_file": data["train_src"],
            "train_labels_file": data["train_tgt"],
            "source_vocabulary": data["src_vocab"],
            "target_vocabulary": data["tgt_vocab"],
        },
        "params": {
            "optimizer": "Adam",
            "learning_rate": 0.002,
            "warmup_steps": 200,
            "decay_type": "CosineDecay",
            "decay_params": {"decay_steps": "max_step", "alpha": 0.05},
            "beam_width": 1,
        },
        "train": {
            "batch_size": 64,
            "batch_type": "examples",
            "max_step": args.max_step,
            "save_checkpoints_steps": args.max_step // 10,
            "keep_checkpoint_max": 10,
            "save_summary_steps": args.max_step // 10,
            "moving_average_decay": 0.99,
        },
        "infer": {"batch_size": 50},
    }
    config_path = os.path.join(out, "demo.yml")
    with open(config_path, "w", encoding="utf-8") as config_file:
        yaml.safe_dump(config, config_file, sort_keys=False)

    bin_dir = os.path.dirname(sys.executable)
    onmt_main = os.path.join(bin_dir, "onmt-main")
    _run([onmt_main, "--model", MODEL_FILE, "--config", config_path, "--seed", "1", "train"],
         os.path.join(out, "train.log"))
    average_dir = os.path.join(out, "averaged")
    _run([sys.executable, os.path.join(ROOT, "tools", "average_checkpoints.py"),
          "--model_dir", model_dir, "--output_dir", average_dir, "--max_count", "5"],
         os.path.join(out, "average.log"))
    predictions = os.path.join(out, "predictions.txt")
    _run([onmt_main, "--config", config_path, "--model_dir", average_dir, "infer",
          "--features_file", data["test_src"], "--predictions_file", predictions],
         os.path.join(out, "infer.log"))
    plot = os.path.join(out, "learning_rate.png")
    _run([sys.executable, os.path.join(ROOT, "tools", "plot_schedule.py"),
          "--config", config_path, "--output", plot], os.path.join(out, "plot.log"))

    with open(predictions, encoding="utf-8") as hyp, open(data["test_tgt"], encoding="utf-8") as ref:
        pairs = [(h.strip(), r.strip()) for h, r in zip(hyp, ref)]
    exact = sum(h == r for h, r in pairs)
    with open(os.path.join(out, "average.log"), encoding="utf-8") as log:
        averaged = log.read().strip().splitlines()[-1]
    print()
    print(f"training log:      {os.path.join(out, 'train.log')}")
    print(f"model directory:   {model_dir}  (checkpoints hold the moving average)")
    print(f"averaged model:    {average_dir}  ({averaged})")
    print(f"translations:      {predictions}  ({exact} of {len(pairs)} test sentences exactly right)")
    print(f"learning rate:     {plot}")
    print(f"first test line:   {pairs[0][0]!r}  (reference {pairs[0][1]!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
