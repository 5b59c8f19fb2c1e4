#!/usr/bin/env python
"""Compare training recipes on a real corpus: train, translate, score, tabulate (resumable).

    python tools/experiment.py                      # German-English example sentences (Ding), about an hour
    python tools/experiment.py --budget quick       # a few minutes, to try the pipeline
    python tools/experiment.py --budget long        # three times the updates, about 4 hours
    python tools/experiment.py --corpus DIR         # DIR/{train,dev,test}.{src,tgt}, any language pair
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import translation as experiment  # noqa: E402


def _log(message: str) -> None:
    print(time.strftime("%H:%M:%S ") + message, flush=True)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _fail(message: str) -> None:
    sys.stderr.write(f"experiment: error: {message}\n")
    sys.exit(2)


def _interrupt(signum: int, frame: object) -> None:
    """Stops on SIGTERM as on Ctrl-C: the runs going are terminated, what they finished is kept."""
    raise KeyboardInterrupt


def _ding(path: str) -> list[tuple[str, str]]:
    if not os.path.exists(path) and path == experiment.DING and os.geteuid() == 0 and shutil.which("apt-get"):
        _log("installing Debian's trans-de-en (the Ding dictionary)")
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "trans-de-en"], check=False)
    if not os.path.exists(path):
        _fail(f"{path} not found: install Debian's trans-de-en (apt-get install trans-de-en) or give --ding FILE")
    return experiment.read_ding(path)


def _corpus(directory: str) -> dict[str, list]:
    splits = {}
    for split in ("train", "dev", "test"):
        sides = []
        for side in ("src", "tgt"):
            path = os.path.join(directory, f"{split}.{side}")
            if not os.path.isfile(path):
                _fail(f"--corpus {directory}: missing {path} (expected train, dev and test .src/.tgt files)")
            with open(path, encoding="utf-8") as lines:
                sides.append([line.rstrip("\n") for line in lines])
        if len(sides[0]) != len(sides[1]) or not sides[0]:
            _fail(f"--corpus {directory}: {split}.src and {split}.tgt must have the same, non-zero number of lines")
        splits[split] = list(zip(*sides))
    return splits


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(seed) for seed in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up notices, here and in the runs' logs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=list(experiment.BUDGETS), default="hour",
                        help="hour (default): 1,000 updates a run, the whole table in about an hour on 2 cores; "
                        "quick: 3,000 pairs, 150 updates, 1 seed, a few minutes; long: 3,000 updates of "
                        "twice the batch, about 4 hours.")
    parser.add_argument("--work_dir", help="Data, runs and logs (default: run/experiment, "
                        "run/experiment-BUDGET with --budget quick or long, and -NAME added with --corpus NAME).")
    parser.add_argument("--results_dir", help="Where results.json, results.md and curves.png go after each "
                        "training run (default: experiments/de-en for the German-English corpus with the hour "
                        "budget's settings, experiments/de-en-long with the long budget's, else WORK_DIR/results).")
    parser.add_argument("--corpus", help="Directory with train/dev/test .src/.tgt plain-text files.")
    parser.add_argument("--ding", default=experiment.DING, help="The Ding dictionary file.")
    parser.add_argument("--recipes", help="Comma-separated subset of recipes to run.")
    parser.add_argument("--max_step", type=_positive, help="Training updates per run.")
    parser.add_argument("--seeds", type=_seeds, help="Comma-separated seeds, e.g. 1,2,3.")
    parser.add_argument("--vocab_size", type=_positive, help="SentencePiece vocabulary size.")
    parser.add_argument("--model", help="Model file (default: configs/models/small_transformer.py).")
    parser.add_argument("--jobs", type=_positive, default=1,
                        help="Training runs side by side, each with its share of the cores (default: 1).")
    parser.add_argument("--progress_every", type=_positive, default=300, metavar="SECONDS",
                        help="Report each training run's step and dev loss this often (default: 300).")
    args = parser.parse_args()

    settings = experiment.Settings(**experiment.BUDGETS[args.budget])
    if args.max_step is not None:
        settings = dataclasses.replace(settings, max_step=args.max_step)
    if args.vocab_size is not None:
        settings = dataclasses.replace(settings, vocab_size=args.vocab_size)
    if args.model is not None:
        settings = dataclasses.replace(settings, model_file=os.path.abspath(args.model))
    if args.seeds:
        settings = dataclasses.replace(settings, seeds=args.seeds)
    all_recipes = experiment.recipes(settings.peak, settings.warmup, settings.model_dim, settings.ema,
                                     settings.average)
    selected = all_recipes
    if args.recipes:
        names = args.recipes.split(",")
        unknown = sorted(set(names) - {r.name for r in all_recipes})
        if unknown:
            _fail(f"--recipes: unknown {', '.join(unknown)}; valid: {', '.join(r.name for r in all_recipes)}")
        selected = [r for r in all_recipes if r.name in names]

    name = "experiment" + ("" if args.budget == "hour" else f"-{args.budget}")
    if args.corpus:
        name += "-" + os.path.basename(os.path.normpath(args.corpus))
    work_dir = args.work_dir or os.path.join(ROOT, "run", name)
    # The committed tables are rewritten only by the settings that made them.
    overridden = args.corpus or any(value is not None for value in (args.max_step, args.vocab_size, args.model))
    published = None if overridden else {"hour": "de-en", "long": "de-en-long"}.get(args.budget)
    results_dir = args.results_dir or (
        os.path.join(ROOT, "experiments", published) if published else os.path.join(work_dir, "results"))
    try:
        runner = experiment.Experiment(work_dir, settings, log=_log, jobs=args.jobs,
                                       progress_every=args.progress_every)
    except ValueError as error:
        _fail(str(error))
    if args.corpus:
        splits = _corpus(args.corpus)
        if settings.max_train is not None:
            splits["train"] = splits["train"][: settings.max_train]
    else:
        splits = experiment.split_corpus(_ding(args.ding), settings)
    _log(f"{len(splits['train'])} train, {len(splits['dev'])} dev, {len(splits['test'])} test pairs; "
         f"{_count(len(selected), 'recipe')} x {_count(len(settings.seeds), 'seed')}, "
         f"{settings.max_step} updates each")

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        runner.run(splits, selected, on_task_done=lambda results: experiment.write_report(
            results, all_recipes, results_dir))
    except RuntimeError as error:
        sys.stderr.write(f"experiment: {error}\n")
        return 1
    except KeyboardInterrupt:
        _log("stopped; finished runs and translations are kept: run the same command again to resume")
        return 130
    # The report was written after the last training run.
    print("\n" + experiment.markdown_table(experiment.summary(runner.results, all_recipes)))
    _log(f"results in {results_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
