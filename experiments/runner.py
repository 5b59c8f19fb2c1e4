"""The machinery shared by the experiments: training runs with ``onmt-main``, resumable.

Every recipe of an experiment trains the same model on the same data for the same number
of updates and seeds; recipes that differ only after training (which weights are taken,
checkpoint averaging) share the training run. Each unit of work (a training run, a
scoring) is skipped when its result is already in ``results.json``, and an interrupted
training run resumes from its last checkpoint, so the command can be run again after an
interruption. Training runs can go side by side (``jobs``), each with its share of the
processor's cores. A task (translation, grapheme-to-phoneme) subclasses :class:`Experiment`
with its data, its training configuration and its scoring.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import yaml

from onmt_trainkit import averaging, checkpoint_state
from onmt_trainkit.events import read_eval_metrics, read_learning_rates, wall_time_spans

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIAL_TOKENS = ("<blank>", "<s>", "</s>")
_LOGGED_STEP = re.compile(r"\bStep = (\d+) ;")


@dataclass(frozen=True)
class Recipe:
    """A training recipe and the weights taken out of its run.

    Attributes:
      name: The recipe's name in results and on the command line.
      description: Its row label in the table.
      training: The training run it uses (recipes with the same one share it).
      params: ``params`` overrides of the training run.
      train: ``train`` overrides of the training run.
      average: 0 for the last checkpoint, else the number of last checkpoints averaged.
      weights: ``None`` for the weights that the checkpoints hold as the model's (the moving
        average when the run keeps one); ``"raw"`` for the training weights that the plugin
        saves beside them (``tools/average_checkpoints.py --weights raw``).
      branch: When given, the training run starts from another run's checkpoint instead of
        from scratch (:class:`Branch`).
    """

    name: str
    description: str
    training: str
    params: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    average: int = 0
    weights: str | None = None
    branch: Branch | None = None


@dataclass(frozen=True)
class Branch:
    """Where a training run branches off another of the same seed: it resumes from the last
    checkpoint of ``parent``'s run at or before ``step``, with its own configuration.

    The two runs are one up to ``step`` when their configurations train alike until there:
    warmup-stable-decay is the constant rate until its decay starts, so its run branches off
    the constant run's there, as warmup-stable-decay is meant to be used. The branch's
    checkpoints up to that step are the parent's, and its record (dev loss, learning rate,
    dev error rates) up to there is the parent's; after it, the branch goes on as any resumed
    ``onmt-main`` run does (its training data start over, in the order of the seed).

    Attributes:
      parent: A recipe of the run branched off (its training run is trained first if needed).
      step: The last step at which the two runs are the same.
    """

    parent: Recipe
    step: int


@dataclass
class Settings:
    """The settings every experiment has: budget, model, seeds and the sizes of its splits."""

    max_step: int = 1000
    seeds: tuple[int, ...] = (1, 2)
    batch_size: int = 1024
    model_file: str = os.path.join(ROOT, "configs", "models", "small_transformer.py")
    model_dim: int = 128
    peak: float = 2e-3
    warmup: int = 100
    ema: float = 0.995
    average: int = 5
    eval_every: int = 100
    dev_size: int = 1000
    test_size: int = 1000
    max_train: int | None = None


def result_key(name: str, seed: int) -> str:
    """The key of a recipe's results (or its training run's) for one seed in ``results.json``,
    which also names its files: ``NAME-seedN``."""
    return f"{name}-seed{seed}"


def read_lines(path: str) -> list[str]:
    """The lines of a UTF-8 text file, without their line ends."""
    with open(path, encoding="utf-8") as lines:
        return [line.rstrip("\n") for line in lines]


def write_lines(path: str, lines: list[str]) -> None:
    """Writes ``lines`` to ``path`` (written aside, then renamed)."""
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as output:
        output.write("".join(line + "\n" for line in lines))
    os.replace(temporary, path)


def recorded(settings: Settings) -> dict:
    """The settings as ``results.json`` records them: a model file of this repository by its
    path from the repository's root, so that results compare across clones."""
    values = json.loads(json.dumps(asdict(settings)))
    if os.path.commonpath([ROOT, os.path.abspath(settings.model_file)]) == ROOT:
        values["model_file"] = os.path.relpath(settings.model_file, ROOT)
    return values


def _comparable(settings: dict) -> dict:
    """The settings that change results (more or fewer seeds keep the finished ones)."""
    return {key: value for key, value in settings.items() if key != "seeds"}


class WorkDirInUse(ValueError):
    """Another experiment runs in the work directory."""


class OtherData(ValueError):
    """The work directory holds results of other data."""


def data_record(splits: dict[str, list]) -> dict:
    """What ``results.json`` records of the data: the SHA-256 of its splits (as JSON, keys
    sorted) and their sizes."""
    text = json.dumps(splits, sort_keys=True, ensure_ascii=False)
    return {"sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            **{f"{split}_size": len(entries) for split, entries in sorted(splits.items())}}


def data_changes(results: dict, data: dict) -> list[str]:
    """The keys of the record ``data`` (:func:`data_record`) that differ from the one that
    ``results`` holds; none when it holds none (a version that kept no record wrote it)."""
    return changed_keys(results["data"], data) if "data" in results else []


@contextlib.contextmanager
def only_user(work_dir: str) -> Iterator[None]:
    """Holds an exclusive lock on ``work_dir`` (its ``.lock`` file, which names the holding
    process; the lock goes with the process however it ends): two experiments in one work
    directory would train the same runs. An experiment's ``onmt-main`` processes do not hold
    it: after a ``kill -9`` of the experiment, they may still be running.

    Raises:
      WorkDirInUse: when another process holds it.
    """
    os.makedirs(work_dir, exist_ok=True)
    with open(os.path.join(work_dir, ".lock"), "a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise WorkDirInUse(f"{work_dir} is in use by another experiment (process {lock.read().strip() or '?'}); "
                               "wait for it to end, or give another --work_dir") from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)
            lock.flush()
            fcntl.flock(lock, fcntl.LOCK_UN)


def report_conflict(results_dir: str, results: dict) -> str | None:
    """Why a report of ``results`` should not be written into ``results_dir``: its
    ``results.json`` records runs or scores that ``results`` lacks, or results of other
    settings or other data (when both record theirs), or cannot be read; ``None`` when it may
    (no such file included)."""
    path = os.path.join(results_dir, "results.json")
    try:
        with open(path, encoding="utf-8") as saved:
            committed = json.load(saved)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        return f"{path} cannot be read ({error})"
    changed = changed_keys(_comparable(committed.get("settings", {})), _comparable(results.get("settings", {})))
    if changed:
        return f"{path} holds results of other settings ({', '.join(changed)} differ)"
    changed = data_changes(committed, results["data"]) if "data" in results else []
    if changed:
        return f"{path} holds results of other data ({', '.join(changed)} differ)"
    missing = [key for kind in ("runs", "scores") for key in sorted(committed.get(kind, {}))
               if key not in results.get(kind, {})]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        return f"{path} records {len(missing)} runs or scores that this work directory has not ({shown})"
    return None


def last_logged_step(log_path: str, start: int = 0) -> int | None:
    """The last training step that ``onmt-main`` reported in its log (``Step = N ;``), read
    from the log's last 64 KB after byte ``start`` (where the running command's output
    begins in a log that earlier runs wrote to); ``None`` before its first report."""
    with open(log_path, "rb") as log:
        log.seek(max(start, os.path.getsize(log_path) - 65536))
        steps = _LOGGED_STEP.findall(log.read().decode("utf-8", "replace"))
    return int(steps[-1]) if steps else None


def _still_running(process: subprocess.Popen, seconds: float) -> bool:
    """Waits up to ``seconds`` for ``process``; whether it is still running."""
    try:
        process.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        return True


def dev_losses(model_dir: str) -> dict[int, float]:
    """``{step: dev loss}`` of the evaluations recorded in ``model_dir``."""
    return {step: metrics["loss"] for step, metrics in read_eval_metrics(model_dir).items() if "loss" in metrics}


def training_seconds(model_dir: str) -> int | None:
    """The seconds that the ``onmt-main train`` processes of ``model_dir`` trained: for each,
    from its first to its last training summary (the evaluations between them included;
    start-up, the final evaluation and the updates after the last summary not), summed;
    ``None`` without event files."""
    spans = wall_time_spans(model_dir)
    return round(sum(last - first for first, last in spans)) if spans else None


def changed_keys(before: dict, after: dict, prefix: str = "") -> list[str]:
    """The keys whose values differ between two configurations, nested ones dotted
    (``train.max_step``), in order."""
    changed = []
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += changed_keys(old, new, f"{prefix}{key}.")
        elif old != new:
            changed.append(f"{prefix}{key}")
    return changed


def trained_up_to(model_dir: str) -> int:
    """The step of the last checkpoint in ``model_dir`` (0 without one)."""
    try:
        return averaging.checkpoint_step(averaging.listed_checkpoints(model_dir)[-1])
    except averaging.AveragingError:
        return 0


def training_tasks(seeds: tuple[int, ...], selected: list[Recipe]) -> dict[tuple[int, str], list[Recipe]]:
    """Groups the recipes by training run: ``(seed, training) -> recipes that share it``."""
    tasks: dict[tuple[int, str], list[Recipe]] = {}
    for seed in seeds:
        for recipe in selected:
            tasks.setdefault((seed, recipe.training), []).append(recipe)
    return tasks


Chain = list[tuple[Recipe, list[Recipe]]]
"""Training runs of one seed done in turn: (a recipe of the run, the recipes scored on it)."""


def chains(seeds: tuple[int, ...], selected: list[Recipe]) -> list[tuple[int, Chain]]:
    """The units of work: each training run with the recipes that share it
    (:func:`training_tasks`), after the run it branches off (:class:`Branch`, trained without
    scores when none of its recipes is selected) and in the same chain; the chains of more
    runs first, so that the shorter ones fill in at the end."""
    tasks = training_tasks(seeds, selected)
    ordered: dict[tuple[int, str], Chain] = {
        key: [(sharing[0], sharing)] for key, sharing in tasks.items() if sharing[0].branch is None}
    for (seed, _), sharing in tasks.items():
        branch = sharing[0].branch
        if branch is not None:
            ordered.setdefault((seed, branch.parent.training), [(branch.parent, [])]).append((sharing[0], sharing))
    work = [(seed, chain) for (seed, _), chain in ordered.items()]
    return sorted(work, key=lambda unit: -len(unit[1]))


def copy_checkpoints(model_dir: str | os.PathLike, step: int, destination: str | os.PathLike) -> None:
    """Starts ``destination`` (which must not exist) with copies of ``model_dir``'s checkpoints
    up to ``step``, as a run stopped after saving checkpoint ``step`` leaves them: its
    ``checkpoint`` file lists them with their save times, which TensorFlow's
    ``CheckpointManager`` keeps and prunes them by. The event files are not copied. Written
    aside, then renamed.

    Raises:
      ValueError: if ``destination`` exists, or ``model_dir`` has no valid ``checkpoint`` file
        listing a checkpoint up to ``step`` whose files are there.
    """
    model_dir, destination = os.fspath(model_dir), os.fspath(destination)
    if os.path.lexists(destination):
        raise ValueError(f"{destination} exists already")
    state_path = os.path.join(model_dir, "checkpoint")
    try:
        with open(state_path, "rb") as listing:
            state = checkpoint_state.parse(listing.read())
    except (OSError, checkpoint_state.StateError) as error:
        raise ValueError(f"{state_path}: {error}") from None
    listed = state.all_model_checkpoint_paths or [state.model_checkpoint_path]
    times = state.all_model_checkpoint_timestamps
    kept = [i for i, path in enumerate(listed) if averaging.checkpoint_step(path) <= step]
    if not kept:
        raise ValueError(f"{state_path} lists no checkpoint up to step {step}")
    prefixes = [os.path.basename(listed[i]) for i in kept]
    present = os.listdir(model_dir)
    files = {prefix: [name for name in present if name.startswith(prefix + ".")] for prefix in prefixes}
    missing = [prefix for prefix, names in files.items() if prefix + ".index" not in names]
    if missing:
        raise ValueError(f"{model_dir} has no {', '.join(missing)} (listed in its checkpoint file)")
    aside = destination + ".copying"
    shutil.rmtree(aside, ignore_errors=True)
    os.makedirs(aside)
    for name in (name for names in files.values() for name in names):
        shutil.copy2(os.path.join(model_dir, name), aside)
    write_lines(os.path.join(aside, "checkpoint"), checkpoint_state.format_state(
        prefixes[-1], prefixes, [times[i] for i in kept] if len(times) == len(listed) else None,
        state.last_preserved_timestamp).splitlines())
    os.replace(aside, destination)


def training_config(experiment: Experiment, recipe: Recipe, seed: int, paths: dict[str, str], max_length: int,
                    eval_batch_size: int, infer: dict, checkpoints: int = 10) -> dict:
    """The ``onmt-main`` configuration of a recipe's training run: Adam (0.9, 0.998), label
    smoothing 0.1, the loss averaged in time (OpenNMT-tf's Transformer settings) and the
    recipe's overrides; ``checkpoints`` checkpoints, evenly spaced, all kept; examples longer
    than ``max_length`` left out. The data files are ``paths``' ``train_src``, ``train_tgt``,
    ``dev_src``, ``dev_tgt`` and ``vocab`` (on both sides)."""
    settings = experiment.settings
    # OpenNMT-tf's evaluation also decodes the dev set, which only the dev loss is wanted from
    # here: one greedy step. Decoding for scores has its own parameters.
    params = {"optimizer": "Adam", "optimizer_params": {"beta_1": 0.9, "beta_2": 0.998},
              "label_smoothing": 0.1, "average_loss_in_time": True, "beam_width": 1,
              "maximum_decoding_length": 1, **copy.deepcopy(recipe.params)}
    return {
        "model_dir": os.path.join(experiment.work_dir, "runs", experiment.run_key(recipe, seed)),
        "data": {
            "train_features_file": paths["train_src"], "train_labels_file": paths["train_tgt"],
            "eval_features_file": paths["dev_src"], "eval_labels_file": paths["dev_tgt"],
            "source_vocabulary": paths["vocab"], "target_vocabulary": paths["vocab"],
        },
        "params": params,
        "train": {"batch_type": "tokens", "batch_size": settings.batch_size, "max_step": settings.max_step,
                  "save_checkpoints_steps": max(settings.max_step // checkpoints, 1),
                  "keep_checkpoint_max": checkpoints, "save_summary_steps": max(settings.max_step // 30, 1),
                  "maximum_features_length": max_length, "maximum_labels_length": max_length,
                  "sample_buffer_size": -1, **recipe.train},
        "eval": {"steps": settings.eval_every, "batch_size": eval_batch_size, "batch_type": "examples"},
        "infer": infer,
    }


def decoding_config(work_dir: str, beam_width: int, max_length: int) -> str:
    """Writes the decoding parameters of the scored outputs into ``work_dir/configs``, once
    for all (decodings side by side read it); returns its path."""
    path = os.path.join(work_dir, "configs", "decoding.yml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_lines(path, [yaml.safe_dump({"params": {"beam_width": beam_width, "maximum_decoding_length": max_length}})])
    return path


class Experiment:
    """Runs the recipes and records their results in ``<work_dir>/results.json``.

    A work directory holds the results of one set of settings (seeds aside: more seeds
    add to the results); other settings are refused, so that no result is lost or mixed.
    Subclasses give :meth:`prepare_data`, :meth:`training_config` and :meth:`measure`, which
    scores one recipe; or, to score the recipes of a run together, :meth:`score_run`.

    Args:
      work_dir: Where data, runs, logs and ``results.json`` go.
      settings: The budget and model.
      log: Called with each progress message.
      jobs: Training runs to go side by side; each ``onmt-main`` then gets its share of
        the cores (one run at a time leaves TensorFlow's default).
      progress_every: Seconds between two progress messages of a training run (its last
        logged step and dev loss).
    """

    def __init__(self, work_dir: str, settings: Settings, log: Callable[[str], None] = print, jobs: int = 1,
                 progress_every: float = 300.0):
        self.work_dir = os.path.abspath(work_dir)
        self.settings = settings
        self.log = log
        self.jobs = jobs
        self.progress_every = progress_every
        self._reported: dict[str, str] = {}
        self._workers = 1
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._stopping = False
        self.results_path = os.path.join(self.work_dir, "results.json")
        current = recorded(settings)
        self.results: dict = {"settings": current, "runs": {}, "scores": {}}
        if os.path.exists(self.results_path):
            with open(self.results_path, encoding="utf-8") as saved:
                previous = json.load(saved)
            changed = changed_keys(_comparable(previous.get("settings", {})), _comparable(current))
            if changed:
                raise ValueError(
                    f"{self.results_path} holds results of other settings ({', '.join(changed)} differ); "
                    "give another --work_dir, or remove it to start again"
                )
            self.results = {**self.results, **previous}
            self.results["settings"] = current
        self.onmt_main = os.path.join(os.path.dirname(sys.executable), "onmt-main")

    def check_data(self, data: dict) -> None:
        """Checks the record of the data (:func:`data_record`) against the one that
        ``results.json`` holds (a work directory of a version that kept none is not checked).

        Raises:
          OtherData: when they differ.
        """
        changed = data_changes(self.results, data)
        if changed:
            raise OtherData(f"{self.results_path} holds results of other data ({', '.join(changed)} differ); give "
                            "another --work_dir, or remove it to start again")

    def prepare_data(self, splits: dict[str, list]) -> dict[str, str]:
        """Writes the data files into the work directory; returns their paths by name."""
        raise NotImplementedError

    def training_config(self, recipe: Recipe, seed: int, paths: dict[str, str]) -> dict:
        """The ``onmt-main`` configuration of a recipe's training run."""
        raise NotImplementedError

    def measure(self, recipe: Recipe, seed: int, model_dir: str, paths: dict[str, str], name: str) -> dict:
        """Decodes the scored split with the model in ``model_dir``; returns its scores by
        metric (``name`` names its files)."""
        raise NotImplementedError

    def score(self, recipe: Recipe, seed: int, model_dir: str, paths: dict[str, str]) -> None:
        """Scores the weights that a recipe takes out of its run (:meth:`weights_dir`) and
        records them in ``scores``; skipped when recorded."""
        key = result_key(recipe.name, seed)
        if key in self.results["scores"]:
            return
        scores = self.measure(recipe, seed, self.weights_dir(recipe, seed, model_dir), paths, key)
        self.record("scores", key, {"recipe": recipe.name, "seed": seed, **scores})

    def score_run(self, recipes: list[Recipe], seed: int, model_dir: str, paths: dict[str, str]) -> None:
        """Scores the recipes that share a finished training run: each in turn (:meth:`score`)."""
        for recipe in recipes:
            self.score(recipe, seed, model_dir, paths)

    def run_key(self, recipe: Recipe, seed: int) -> str:
        """The name of a recipe's training run in ``results["runs"]`` and on disk."""
        return result_key(recipe.training, seed)

    def record(self, kind: str, key: str | None, value: dict) -> None:
        """Adds a result (``results[kind][key]``; ``results[kind]`` itself for no ``key``) and
        saves ``results.json`` (written aside, then renamed)."""
        with self._lock:
            if key is None:
                self.results[kind] = value
            else:
                self.results.setdefault(kind, {})[key] = value
            write_lines(self.results_path, [json.dumps(self.results, indent=1, sort_keys=True)])

    def threads(self) -> list[str]:
        """The options (``onmt-main``'s, which ``experiments/decode.py`` takes too) that give a
        process its share of the cores."""
        if self._workers == 1:
            return []
        threads = str(max(1, (os.cpu_count() or 1) // self._workers))
        return ["--intra_op_parallelism_threads", threads, "--inter_op_parallelism_threads", threads]

    def execute(self, command: list[str], log_name: str,
                on_wait: Callable[[str, int], None] | None = None) -> None:
        """Runs ``command`` with its output appended to ``logs/<log_name>``; calls ``on_wait``
        with the log's path and the offset where this command's output starts in it, every
        ``progress_every`` seconds while it runs."""
        log_path = os.path.join(self.work_dir, "logs", log_name)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with self._lock:
            if self._stopping:
                raise RuntimeError("stopped")
            with open(log_path, "a", encoding="utf-8") as log:
                start = log.tell()
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            self._running.add(process)
        try:
            while _still_running(process, self.progress_every):
                if on_wait is not None:
                    on_wait(log_path, start)
        finally:
            if process.poll() is None:  # on_wait failed: no run is left behind
                process.terminate()
                process.wait()
            with self._lock:
                self._running.discard(process)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed; see {log_path}")

    def _report_training(self, key: str, model_dir: str, log_path: str, start: int) -> None:
        """Logs a training run's last step (as its log reports it after byte ``start``) and
        dev loss, when they changed since last time."""
        step = last_logged_step(log_path, start)
        if step is None:
            return
        message = f"{key}: step {step} of {self.settings.max_step}"
        losses = dev_losses(model_dir)
        if losses:
            message += f", dev loss {losses[max(losses)]:.2f} at step {max(losses)}"
        if self._reported.get(key) != message:
            self._reported[key] = message
            self.log(message)

    def config_path(self, recipe: Recipe, seed: int) -> str:
        """Where a recipe's training configuration is written."""
        return os.path.join(self.work_dir, "configs", f"{self.run_key(recipe, seed)}.yml")

    def train(self, recipe: Recipe, seed: int, paths: dict[str, str]) -> str:
        """Trains a recipe's run (or resumes it), from the run it branches off if any
        (:class:`Branch`), and records it in ``runs``: its series, ``seconds`` (this call's
        wall time) and ``training_seconds`` (:func:`training_seconds`; added to a run recorded
        without it); returns its model directory."""
        key = self.run_key(recipe, seed)
        config = self.training_config(recipe, seed, paths)
        if key in self.results["runs"]:
            record = self.results["runs"][key]
            seconds = None if "training_seconds" in record else training_seconds(config["model_dir"])
            if seconds is not None:  # a run recorded without it
                self.record("runs", key, {**record, "training_seconds": seconds})
            return config["model_dir"]
        config_path = self.config_path(recipe, seed)
        if trained_up_to(config["model_dir"]) > 0 and os.path.exists(config_path):
            with open(config_path, encoding="utf-8") as saved:
                changed = changed_keys(yaml.safe_load(saved), config)
            if changed:
                raise RuntimeError(
                    f"{key} was started with another configuration ({config_path}: {', '.join(changed)} differ from "
                    "what this version gives it); resuming would go on with another recipe: remove "
                    f"{config['model_dir']} to train the run again from the start")
        os.makedirs(os.path.dirname(config_path), exist_ok=True)
        write_lines(config_path, [yaml.safe_dump(config, sort_keys=False)])
        start = time.time()
        inherited: dict[str, dict[str, float]] = {}
        if recipe.branch is not None:
            inherited = self._branch(recipe, seed, paths, config["model_dir"])
        if trained_up_to(config["model_dir"]) < self.settings.max_step:
            self.log(f"training {key} ({self.settings.max_step} updates)")
            self.execute([self.onmt_main, "--model", self.settings.model_file, "--config", config_path,
                          "--seed", str(seed), *self.threads(), "train", "--with_eval"], f"{key}.train.log",
                         on_wait=functools.partial(self._report_training, key, config["model_dir"]))
        own = {"dev_loss": dev_losses(config["model_dir"]), "learning_rate": read_learning_rates(config["model_dir"])}
        record = {"seconds": round(time.time() - start), "config": os.path.relpath(config_path, self.work_dir)}
        seconds = training_seconds(config["model_dir"])
        if seconds is not None:
            record["training_seconds"] = seconds
        for series, values in own.items():
            record[series] = {**inherited.get(series, {}), **{str(step): values[step] for step in sorted(values)}}
        record.update({series: values for series, values in inherited.items() if series not in own})
        self.record("runs", key, record)
        return config["model_dir"]

    def _branch(self, recipe: Recipe, seed: int, paths: dict[str, str],
                model_dir: str) -> dict[str, dict[str, float]]:
        """Starts a branching run (:class:`Branch`) from its parent's last checkpoint at or
        before the branch step, and records where it branched off (``branches``); a run with
        checkpoints of its own is left as it is. Returns the parent run's record series up to
        the step branched at: ``{}`` for a run that did not branch off (its parent had no
        checkpoint that early: it trains from scratch, as the log says)."""
        key, branch = self.run_key(recipe, seed), recipe.branch
        parent_key = self.run_key(branch.parent, seed)
        parent_dir = self.train(branch.parent, seed, paths)
        if key not in self.results.get("branches", {}) and not trained_up_to(model_dir):
            steps = [averaging.checkpoint_step(path) for path in averaging.listed_checkpoints(parent_dir)]
            at = max((step for step in steps if step <= branch.step), default=0)
            if not at:
                self.log(f"{key}: {parent_key} has no checkpoint at or before step {branch.step} to branch off; "
                         "training from scratch")
                return {}
            if os.path.lexists(model_dir):
                raise RuntimeError(f"{model_dir} exists but holds no checkpoint: remove it to let {key} branch "
                                   f"off {parent_key}")
            self.record("branches", key, {"run": parent_key, "step": at})
        if key not in self.results.get("branches", {}):
            return {}
        at = self.results["branches"][key]["step"]
        if not trained_up_to(model_dir):
            self.log(f"{key} branches off {parent_key} at step {at}")
            copy_checkpoints(parent_dir, at, model_dir)
        return {series: {step: value for step, value in values.items() if int(step) <= at}
                for series, values in self.results["runs"][parent_key].items() if isinstance(values, dict)}

    def weights_dir(self, recipe: Recipe, seed: int, model_dir: str) -> str:
        """The model directory of the weights a recipe takes out of its run: the run's own
        (its last checkpoint), or a new one that ``tools/average_checkpoints.py`` writes."""
        if not recipe.average and recipe.weights is None:
            return model_dir
        output = os.path.join(self.work_dir, "averaged", result_key(recipe.name, seed))
        if recipe.weights is None:
            averaging.average_checkpoints(model_dir, output, averaging.Selection(max_count=recipe.average),
                                          overwrite=True)
            return output
        self.execute([sys.executable, os.path.join(ROOT, "tools", "average_checkpoints.py"), "--model_dir",
                      model_dir, "--output_dir", output, "--weights", recipe.weights, "--max_count",
                      str(max(recipe.average, 1)), "--force"], f"{result_key(recipe.name, seed)}.average.log")
        return output

    def run(self, splits: dict[str, list], selected: list[Recipe],
            on_task_done: Callable[[dict], None] | None = None) -> None:
        """Prepares the data, then trains and scores every recipe for every seed.

        Each training run and the recipes that share it form one task, after the run it
        branches off if any (:func:`chains`); chains go ``jobs`` at a time, and
        ``on_task_done`` is called with the results after each task. A chain that fails does
        not stop the others; the first failure is raised when all are done.

        Raises:
          WorkDirInUse: when another experiment runs in the work directory.
          OtherData: when ``results.json`` records other data than ``splits`` (:meth:`check_data`).
        """
        with only_user(self.work_dir):
            self._run(splits, selected, on_task_done)

    def _run(self, splits: dict[str, list], selected: list[Recipe],
             on_task_done: Callable[[dict], None] | None) -> None:
        data = data_record(splits)
        self.check_data(data)
        if "data" not in self.results:
            self.record("data", None, data)
        paths = self.prepare_data(splits)
        work = chains(self.settings.seeds, selected)
        total = sum(len(chain) for _, chain in work)
        done = 0

        def run_task(seed: int, chain: Chain) -> None:
            nonlocal done
            for trained, sharing in chain:
                model_dir = self.train(trained, seed, paths)
                if sharing:
                    self.score_run(sharing, seed, model_dir, paths)
                with self._lock:
                    done += 1
                    self.log(f"[{done}/{total}] done: {self.run_key(trained, seed)}"
                             + (f" ({', '.join(r.name for r in sharing)})" if sharing else ""))
                    if on_task_done is not None:
                        on_task_done(self.results)

        self._workers = min(self.jobs, len(work))
        with concurrent.futures.ThreadPoolExecutor(max_workers=self._workers) as pool:
            futures = [pool.submit(run_task, seed, chain) for seed, chain in work]
            try:
                concurrent.futures.wait(futures)
            except BaseException:  # interrupted (Ctrl-C, SIGTERM): no onmt-main is left running
                pool.shutdown(wait=False, cancel_futures=True)  # first, so that no waiting task starts
                self.stop()
                raise
        errors = [future.exception() for future in futures if future.exception() is not None]
        for error in errors:
            self.log(f"failed: {error}")
        if errors:
            raise errors[0]

    def stop(self) -> None:
        """Terminates the running processes (``onmt-main``, decodings) and starts no other; what
        they finished is kept (a training run resumes from its last checkpoint)."""
        with self._lock:
            self._stopping = True
            running = list(self._running)
        for process in running:
            process.terminate()
        for process in running:
            process.wait()


def summary(results: dict, selected: list[Recipe], metrics: tuple[str, ...]) -> list[dict]:
    """Returns one row per recipe: each metric's mean and standard deviation over seeds, and
    the mean dev loss at the last evaluation (``None`` for weights other than those the run
    evaluated: averages and raw weights of a run with a moving average)."""
    rows = []
    for recipe in selected:
        scores = [s for s in results["scores"].values() if s["recipe"] == recipe.name]
        if not scores:
            continue
        row = {"recipe": recipe.name, "description": recipe.description, "seeds": len(scores)}
        for metric in metrics:
            values = [s[metric] for s in scores]
            row[metric] = statistics.mean(values)
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        losses = [results["runs"][result_key(recipe.training, s["seed"])]["dev_loss"] for s in scores]
        last = [loss[max(loss, key=int)] for loss in losses if loss]
        evaluated = not recipe.average and recipe.weights is None
        row["dev_loss"] = statistics.mean(last) if last and evaluated else None
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], columns: list[tuple[str, str, int]]) -> str:
    """Formats :func:`summary` rows as a Markdown table; ``columns`` are (header, metric,
    decimals), shown as mean ± sd over two seeds or more."""
    headers = ["recipe", "seeds", *(f"{header} (mean ± sd)" for header, _, _ in columns), "last dev loss (mean)"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = []
        for _, metric, decimals in columns:
            cell = f"{row[metric]:.{decimals}f}"
            cells.append(cell + (f" ± {row[f'{metric}_std']:.{decimals}f}" if row["seeds"] > 1 else ""))
        loss = "–" if row["dev_loss"] is None else f"{row['dev_loss']:.2f}"
        lines.append(f"| {row['description']} | {row['seeds']} | {' | '.join(cells)} | {loss} |")
    return "\n".join(lines) + "\n"


def write_report(results: dict, table: str, results_dir: str, draw: Callable[[str], None]) -> None:
    """Writes ``results.json``, ``results.md`` (``table``) and ``curves.png`` (drawn by
    ``draw(path)``) into ``results_dir``, each written aside then renamed."""
    os.makedirs(results_dir, exist_ok=True)
    write_lines(os.path.join(results_dir, "results.json"), [json.dumps(results, indent=1, sort_keys=True)])
    write_lines(os.path.join(results_dir, "results.md"), table.splitlines())
    picture = os.path.join(results_dir, "curves.png")
    draw(picture + ".tmp.png")
    os.replace(picture + ".tmp.png", picture)


@dataclass(frozen=True)
class Panel:
    """One picture of ``curves.png``: a run record's series against steps.

    Attributes:
      key: The run record's series (``learning_rate``, ``dev_loss``, ...).
      ylabel: The y axis' label.
      title: The picture's title.
      last: The share of the steps shown, the last ones: 1 shows every step with the y axis
        from 0; 0.5 shows the second half of the longest run, the y axis fitted to it (how flat
        the end of a curve is, and the seeds apart).
      values: The series by training recipe (``{"step": value}``), drawn in place of the run
        records' (the learning rate as the schedule gives it, at every step that matters).
    """

    key: str
    ylabel: str
    title: str
    last: float = 1.0
    values: dict[str, dict[str, float]] | None = None


def plot(results: dict, selected: list[Recipe], path: str, panels: list[Panel]) -> None:
    """Draws, per training recipe and side by side, each run record's series named in
    ``panels`` (or the panel's own ``values``) against steps (the last ones only for a panel
    with ``last`` < 1); the learning rate once per recipe, other series once per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5))
    longest = max((int(step) for run in results["runs"].values() for panel in panels
                   for step in run.get(panel.key) or {}), default=0)
    for training in dict.fromkeys(recipe.training for recipe in selected):
        runs = [v for k, v in results["runs"].items() if k.startswith(f"{training}-seed")]
        color = None
        for panel, picture in zip(panels, axes):
            style = {} if panel.key == "learning_rate" else {"marker": "o", "markersize": 3}
            if panel.values is not None:
                drawn = [panel.values[training]] if training in panel.values else []
            else:
                drawn = [run[panel.key] for run in (runs[:1] if panel.key == "learning_rate" else runs)
                         if run.get(panel.key)]
            for index, series in enumerate(drawn):
                steps, values = _series(series, first=longest * (1 - panel.last))
                (line,) = picture.plot(steps, values, color=color, alpha=0.8, label=None if index else training,
                                       **style)
                color = line.get_color()
    for panel, picture in zip(panels, axes):
        picture.set(xlabel="training step", ylabel=panel.ylabel, title=panel.title)
        if panel.last == 1:
            picture.set_ylim(bottom=0)
        picture.grid(alpha=0.3)
        if picture.lines:
            picture.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _series(values: dict[str, float], first: float = 0) -> tuple[list[int], list[float]]:
    """``{"step": value}`` as steps and values in step order, from step ``first`` on."""
    steps = sorted(int(step) for step in values if int(step) >= first)
    return steps, [values[str(step)] for step in steps]
