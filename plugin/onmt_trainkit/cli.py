"""Command-line entry points: argument parsing and one call into the package each.

A refused request exits with status 2 and one line on standard error, and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import NoReturn
from collections.abc import Sequence

from onmt_trainkit.errors import one_line


AVERAGE_EXAMPLES = """examples:
  # the last 5 checkpoints' model weights (the moving average, with train.moving_average_decay)
  onmt-trainkit-average --model_dir run/model --output_dir run/model/avg5 --max_count 5
  # the raw (training) weights of the last checkpoint
  onmt-trainkit-average --model_dir run/model --output_dir run/model/raw --weights raw --max_count 1
  # the 3 checkpoints with the lowest dev loss (onmt-main train --with_eval)
  onmt-trainkit-average --model_dir run/model --output_dir run/model/best3 --best 3 --metric loss
then: onmt-main --config data.yml --model_dir run/model/avg5 infer --features_file test.src"""

PLOT_EXAMPLES = """examples:
  # a recipe over 100,000 steps (recipes set no train.max_step)
  onmt-trainkit-plot --config configs/warmup_cosine.yml --max_step 100000 --output lr.png
  # your run's configuration, files in onmt-main's order; the values as CSV too
  onmt-trainkit-plot --config data.yml configs/warmup_cosine.yml run.yml --output lr.png --csv lr.csv
  # two curves overlaid, with the weight decay below
  onmt-trainkit-plot --config a.yml --config b.yml --max_step 60000 --output ab.png --weight_decay"""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit status 2 (:func:`fail`); the
    scripts of ``tools/`` use it too."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, message)


def fail(prog: str, message: str) -> NoReturn:
    """Refuses: ``<prog>: error: <message>`` on standard error, exit status 2."""
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.exit(2)


def _quiet_tensorflow() -> None:
    """Keeps TensorFlow's start-up messages off standard error, which carries our errors."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore")


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def average_checkpoints_main(argv: Sequence[str] | None = None) -> int:
    """``onmt-trainkit-average`` / ``tools/average_checkpoints.py``."""
    parser = OneLineParser(
        prog="onmt-trainkit-average",
        description="Average the checkpoints of an OpenNMT-tf model directory into a new one "
                    "(also python tools/average_checkpoints.py in a checkout).",
        epilog=AVERAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model_dir", help="Model directory whose checkpoints to average.")
    parser.add_argument("--output_dir", required=True, help="Directory to create with the average.")
    parser.add_argument("--max_count", type=int, default=8,
                        help="Average the last N checkpoints (default: 8).")
    parser.add_argument("--checkpoints", nargs="+", metavar="PATH",
                        help="Explicit checkpoint prefixes (e.g. run/ckpt-5000) instead.")
    parser.add_argument("--min_step", type=int, help="Leave out checkpoints before this step.")
    parser.add_argument("--max_step", type=int, help="Leave out checkpoints after this step.")
    parser.add_argument("--weights", default="ema", metavar="raw|ema|ema:DECAY",
                        help="Which weights of the checkpoints to average: ema (default: their model "
                             "weights, the first decay's moving average in a run with one), raw (the training "
                             "weights that the plugin saves beside them; the model weights of a checkpoint "
                             "without moving average) or ema:DECAY (that decay's moving average). The output "
                             "holds them as its model weights, without moving-average state.")
    parser.add_argument("--best", type=int, metavar="N",
                        help="Average the N best checkpoints by --metric instead of the last ones.")
    parser.add_argument("--metric",
                        help="Evaluation metric recorded during training (loss, bleu...): of the --weights "
                             "averaged (raw/loss for raw, ema_DECAY/loss for ema:DECAY, as "
                             "train.moving_average_eval_all records them), unless named in full as "
                             "TensorBoard shows it (metrics/bleu, eval/raw/loss...).")
    parser.add_argument("--drop_optimizer", action="store_true",
                        help="Leave out the optimizer state: step counter and slots (inference only).")
    parser.add_argument("--model_key", default="model",
                        help="Name under which the checkpoints hold the model (default: model).")
    parser.add_argument("--force", action="store_true",
                        help="Add the average to an existing, non-empty output directory, as onmt-main "
                             "average_checkpoints does; a checkpoint of the same step or model_description.py "
                             "there is replaced only if the directory holds nothing but averages.")
    args = parser.parse_args(argv)
    from onmt_trainkit import averaging, storage  # after --help: they import numpy

    if args.model_dir is None and args.checkpoints is None:
        parser.error("give --model_dir or --checkpoints")
    for option, value in (("--model_dir", args.model_dir), ("--output_dir", args.output_dir),
                          *(("--checkpoints", path) for path in args.checkpoints or [])):
        if value is not None and not value.strip():
            parser.error(f"{option} must be a non-empty path, got {value!r}")
    if args.output_dir.lower().startswith("ram://"):
        parser.error(f"--output_dir {args.output_dir}: ram:// lives in this process's memory, so the average "
                     "would vanish when the tool exits; give a directory on disk or a remote store (gs://...)")
    paths = [args.model_dir, args.output_dir, *(args.checkpoints or [])]
    if any(storage.is_remote(path) for path in paths if path is not None):
        _quiet_tensorflow()  # TensorFlow reads and writes them

    def show_progress(done: int, total: int, count: int) -> None:
        sys.stderr.write(f"\r{count} checkpoints: read {_human(done)} of {_human(total)} "
                         f"({100 * done // max(total, 1)}%)")
        if done == total:
            sys.stderr.write("\n")

    selection = averaging.Selection(
        max_count=args.max_count,
        checkpoints=args.checkpoints,
        min_step=args.min_step,
        max_step=args.max_step,
        best=args.best,
        metric=args.metric,
    )
    try:
        result = averaging.average_checkpoints(
            args.model_dir,
            args.output_dir,
            selection,
            overwrite=args.force,
            drop_optimizer=args.drop_optimizer,
            progress=show_progress if sys.stderr.isatty() else None,
            model_key=args.model_key,
            log=print,
            weights=args.weights,
        )
    except (averaging.AveragingError, averaging.OutputError, averaging.CheckpointError, OSError) as error:
        fail(parser.prog, one_line(error))
    for note in result.notes:
        print(note)
    if result.metric is not None:
        scores = ", ".join(f"step {step}: {value:g}" for step, value in sorted(result.scores.items()))
        print(f"best {len(result.checkpoints)} by {result.metric} ({scores})")
    steps = ", ".join(str(averaging.checkpoint_step(c)) for c in result.checkpoints)
    weights = "" if result.weights == "ema" else f", {result.weights}"
    count = len(result.checkpoints)
    print(
        f"averaged {count} checkpoint{'s' if count != 1 else ''} (step{'s' if count != 1 else ''} {steps}; "
        f"{result.num_averaged} weights{weights}) into {result.checkpoint_prefix}"
    )
    return 0


def plot_schedule_main(argv: Sequence[str] | None = None) -> int:
    """``onmt-trainkit-plot`` / ``tools/plot_schedule.py``."""
    parser = OneLineParser(
        prog="onmt-trainkit-plot",
        description="Plot the learning rate that onmt-main train would use, step by step "
                    "(also python tools/plot_schedule.py in a checkout).",
        epilog=PLOT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", nargs="+", action="append", required=True, metavar="YML",
                        help="Configuration files, merged as onmt-main does; repeat to overlay curves.")
    parser.add_argument("--max_step", type=int,
                        help="Last step to plot (default: train.max_step); where the files set no "
                             "train.max_step (a recipe alone), also the run's length.")
    parser.add_argument("--output", help="Picture to write (.png, .svg, .pdf).")
    parser.add_argument("--csv", help="CSV to write: a step column and one column per curve.")
    parser.add_argument("--weight_decay", action="store_true",
                        help="Also give the weight decay c(s) of each step's update, w -= c(s) * w "
                             "(lr(s) * params.weight_decay, or optimizer_params.weight_decay as "
                             "given): a second panel below the learning rate, and a "
                             "'<curve> weight_decay' column after each curve's in the CSV.")
    args = parser.parse_args(argv)
    if args.output is None and args.csv is None:
        parser.error("give --output and/or --csv")
    if args.max_step is not None and args.max_step < 1:
        parser.error(f"--max_step must be >= 1, got {args.max_step}")

    _quiet_tensorflow()
    from onmt_trainkit import keys, plotting
    from onmt_trainkit.errors import ConfigError

    try:
        for paths in args.config:
            for unknown in keys.unknown_keys(plotting.load_config(paths)):
                sys.stderr.write(f"{parser.prog}: warning: {unknown.message()}\n")
        curves = [plotting.curve_from_files(paths, args.max_step) for paths in args.config]
        if args.csv:
            plotting.write_csv(curves, args.csv, weight_decay=args.weight_decay)
        if args.output:
            plotting.plot(curves, args.output, weight_decay=args.weight_decay)
    except (ConfigError, OSError, ValueError) as error:
        fail(parser.prog, str(error).splitlines()[0])
    for path in (args.csv, args.output):
        if path:
            print(f"wrote {os.path.abspath(path)}")
    return 0
