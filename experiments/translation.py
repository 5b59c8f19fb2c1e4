"""A translation experiment comparing training recipes on a real corpus, resumable.

Every recipe trains the same model on the same data for the same number of updates and
seeds, with ``onmt-main``; recipes that differ only after training (checkpoint averaging)
share the training run. Each unit of work (a training run, a translation) is skipped when
its result is already in ``results.json``, and an interrupted training run resumes from its
last checkpoint, so the command can be run again after an interruption. Training runs can
go side by side (``jobs``), each with its share of the processor's cores.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from collections.abc import Callable

import yaml

from onmt_trainkit import averaging
from onmt_trainkit.events import read_eval_metrics, read_learning_rates

DING = "/usr/share/trans/de-en"
SPECIAL_TOKENS = ("<blank>", "<s>", "</s>")
_LOGGED_STEP = re.compile(r"\bStep = (\d+) ;")
# Longer training examples are skipped; no translation is decoded longer (a model early in
# training may repeat itself until the limit).
MAX_LENGTH = 100
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Recipe:
    """A training recipe: ``params``/``train`` overrides, and whether to average checkpoints."""

    name: str
    description: str
    training: str
    params: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    average: int = 0


def recipes(peak: float, warmup: int, model_dim: int, ema: float, average: int) -> list[Recipe]:
    """The compared recipes; every schedule peaks at ``peak`` after ``warmup`` steps."""
    noam = {"learning_rate": peak * model_dim**0.5 * warmup**0.5, "decay_type": "NoamDecay",
            "decay_params": {"model_dim": model_dim, "warmup_steps": warmup}}
    linear = {"learning_rate": peak, "warmup_steps": warmup, "decay_type": "PolynomialDecay",
              "decay_params": {"decay_steps": "max_step", "end_learning_rate": 0}}
    with_ema = {"moving_average_decay": ema}
    return [
        Recipe("constant", "constant Adam 1e-3 (Keras's default)", "constant", {"learning_rate": 1e-3}),
        Recipe("noam", "Noam warmup + decay", "noam", noam),
        Recipe("noam_ema", f"Noam + EMA {ema}", "noam_ema", noam, with_ema),
        Recipe("noam_avg", f"Noam + average of the last {average} checkpoints", "noam", noam, average=average),
        Recipe("noam_ema_avg", "Noam + EMA + average", "noam_ema", noam, with_ema, average=average),
        Recipe("warmup_linear", "warmup + linear decay to 0 (BERT)", "warmup_linear", linear),
    ]


@dataclass
class Settings:
    """The experiment's budget and model; the defaults fit the whole table in about an hour
    on 2 cores (:data:`BUDGETS`)."""

    max_step: int = 1000
    seeds: tuple[int, ...] = (1, 2)
    vocab_size: int = 8000
    batch_size: int = 1024
    model_file: str = os.path.join(ROOT, "configs", "models", "small_transformer.py")
    model_dim: int = 128
    peak: float = 2e-3
    warmup: int = 100
    ema: float = 0.995
    average: int = 5
    eval_every: int = 100
    beam_width: int = 1
    dev_size: int = 1000
    test_size: int = 1000
    max_train: int | None = None


# Changes to the defaults: "quick" tries the pipeline in minutes; "long" trains three times as
# many updates of twice the batch (the schedules and the EMA stretched alike) with three
# seeds, and translates with beam search, about 4 hours.
BUDGETS: dict[str, dict] = {
    "quick": dict(max_step=150, seeds=(1,), vocab_size=2000, max_train=3000, dev_size=100, test_size=100,
                  eval_every=75, warmup=50, ema=0.99, average=3),
    "hour": {},
    "long": dict(max_step=3000, seeds=(1, 2, 3), batch_size=2048, warmup=400, ema=0.999, eval_every=500,
                 beam_width=4),
}


def read_ding(path: str = DING) -> list[tuple[str, str]]:
    """Returns the example-sentence pairs of the Ding German-English dictionary.

    A line is ``German entries :: English entries``, entries separated by `` | `` and
    aligned; a pair is kept when both sides end like a sentence (``.``, ``!``, ``?``) and
    have at least three words. Duplicates are dropped.
    """
    pairs, seen = [], set()
    with open(path, encoding="utf-8") as ding:
        for line in ding:
            if line.startswith("#") or " :: " not in line:
                continue
            german, english = line.rstrip("\n").split(" :: ", 1)
            germans, englishes = german.split(" | "), english.split(" | ")
            if len(germans) != len(englishes):
                continue
            for de, en in zip(germans, englishes):
                de, en = de.strip(), en.strip()
                if not (re.search(r"[.!?]$", de) and re.search(r"[.!?]$", en)):
                    continue
                if len(de.split()) < 3 or len(en.split()) < 3 or (de, en) in seen:
                    continue
                seen.add((de, en))
                pairs.append((de, en))
    return pairs


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as lines:
        return [line.rstrip("\n") for line in lines]


def _write_lines(path: str, lines: list[str]) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as output:
        output.write("".join(line + "\n" for line in lines))
    os.replace(temporary, path)


def split_corpus(pairs: list[tuple[str, str]], settings: Settings, seed: int = 0) -> dict[str, list]:
    """Shuffles with ``seed``, then takes the test set, the dev set and the rest for training."""
    pairs = list(pairs)
    random.Random(seed).shuffle(pairs)
    test = pairs[: settings.test_size]
    dev = pairs[settings.test_size : settings.test_size + settings.dev_size]
    train = pairs[settings.test_size + settings.dev_size :]
    if settings.max_train is not None:
        train = train[: settings.max_train]
    return {"train": train, "dev": dev, "test": test}


def prepare_data(work_dir: str, splits: dict[str, list], settings: Settings) -> dict[str, str]:
    """Writes raw and SentencePiece-encoded files and the vocabulary; returns their paths."""
    import sentencepiece

    data_dir = os.path.join(work_dir, "data")
    os.makedirs(data_dir, exist_ok=True)
    paths = {}
    for split, pairs in splits.items():
        for side, index in (("src", 0), ("tgt", 1)):
            paths[f"{split}_{side}_raw"] = os.path.join(data_dir, f"{split}.raw.{side}")
            _write_lines(paths[f"{split}_{side}_raw"], [pair[index] for pair in pairs])
    model_prefix = os.path.join(data_dir, "spm")
    if not os.path.exists(model_prefix + ".model"):
        joint = os.path.join(data_dir, "joint.raw")
        _write_lines(joint, _read_lines(paths["train_src_raw"]) + _read_lines(paths["train_tgt_raw"]))
        sentencepiece.SentencePieceTrainer.train(
            input=joint, model_prefix=model_prefix, vocab_size=settings.vocab_size,
            character_coverage=1.0, model_type="unigram", input_sentence_size=1_000_000,
            shuffle_input_sentence=True, minloglevel=2, num_threads=2, hard_vocab_limit=False,
        )
    processor = sentencepiece.SentencePieceProcessor(model_file=model_prefix + ".model")
    paths["spm"] = model_prefix + ".model"
    for split in splits:
        for side in ("src", "tgt"):
            paths[f"{split}_{side}"] = os.path.join(data_dir, f"{split}.sp.{side}")
            encoded = processor.encode(_read_lines(paths[f"{split}_{side}_raw"]), out_type=str)
            _write_lines(paths[f"{split}_{side}"], [" ".join(pieces) for pieces in encoded])
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    paths["vocab"] = os.path.join(data_dir, "vocab.txt")
    _write_lines(paths["vocab"], [*SPECIAL_TOKENS, *(p for p in pieces if p not in ("<unk>", "<s>", "</s>"))])
    return paths


def training_config(recipe: Recipe, seed: int, paths: dict[str, str], settings: Settings, work_dir: str) -> dict:
    """The ``onmt-main`` configuration of a recipe's training run."""
    # OpenNMT-tf's evaluation also decodes the dev set, which only the dev loss is wanted from
    # here: one greedy step. The test set's translation has its own decoding parameters.
    params = {"optimizer": "Adam", "optimizer_params": {"beta_1": 0.9, "beta_2": 0.998},
              "label_smoothing": 0.1, "average_loss_in_time": True, "beam_width": 1,
              "maximum_decoding_length": 1, **copy.deepcopy(recipe.params)}
    return {
        "model_dir": os.path.join(work_dir, "runs", f"{recipe.training}-seed{seed}"),
        "data": {
            "train_features_file": paths["train_src"], "train_labels_file": paths["train_tgt"],
            "eval_features_file": paths["dev_src"], "eval_labels_file": paths["dev_tgt"],
            "source_vocabulary": paths["vocab"], "target_vocabulary": paths["vocab"],
        },
        "params": params,
        "train": {"batch_type": "tokens", "batch_size": settings.batch_size, "max_step": settings.max_step,
                  "save_checkpoints_steps": max(settings.max_step // 10, 1), "keep_checkpoint_max": 10,
                  "save_summary_steps": max(settings.max_step // 30, 1), "maximum_features_length": MAX_LENGTH,
                  "maximum_labels_length": MAX_LENGTH, "sample_buffer_size": -1, **recipe.train},
        "eval": {"steps": settings.eval_every, "batch_size": 64, "batch_type": "examples"},
        "infer": {"batch_size": 64, "batch_type": "examples", "length_bucket_width": 1},
    }


def _recorded(settings: Settings) -> dict:
    """The settings as ``results.json`` records them: a model file of this repository by its
    path from the repository's root, so that results compare across clones."""
    recorded = json.loads(json.dumps(asdict(settings)))
    if os.path.commonpath([ROOT, os.path.abspath(settings.model_file)]) == ROOT:
        recorded["model_file"] = os.path.relpath(settings.model_file, ROOT)
    return recorded


def _comparable(settings: dict) -> dict:
    """The settings that change results (more or fewer seeds keep the finished ones)."""
    return {key: value for key, value in settings.items() if key != "seeds"}


def last_logged_step(log_path: str) -> int | None:
    """The last training step that ``onmt-main`` reported in its log (``Step = N ;``), read
    from the log's last 64 KB; ``None`` before the first report."""
    with open(log_path, "rb") as log:
        log.seek(max(0, os.path.getsize(log_path) - 65536))
        steps = _LOGGED_STEP.findall(log.read().decode("utf-8", "replace"))
    return int(steps[-1]) if steps else None


def _still_running(process: subprocess.Popen, seconds: float) -> bool:
    """Waits up to ``seconds`` for ``process``; whether it is still running."""
    try:
        process.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        return True


def _dev_losses(model_dir: str) -> dict[int, float]:
    """``{step: dev loss}`` of the evaluations recorded in ``model_dir``."""
    return {step: metrics["loss"] for step, metrics in read_eval_metrics(model_dir).items() if "loss" in metrics}


def _trained_up_to(model_dir: str) -> int:
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


class Experiment:
    """Runs the recipes and records their results in ``<work_dir>/results.json``.

    A work directory holds the results of one set of settings (seeds aside: more seeds
    add to the results); other settings are refused, so that no result is lost or mixed.

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
        current = _recorded(settings)
        self.results: dict = {"settings": current, "runs": {}, "scores": {}}
        if os.path.exists(self.results_path):
            with open(self.results_path, encoding="utf-8") as saved:
                previous = json.load(saved)
            before = _comparable(previous.get("settings", {}))
            changed = sorted(k for k, v in _comparable(current).items() if before.get(k) != v)
            if changed:
                raise ValueError(
                    f"{self.results_path} holds results of other settings ({', '.join(changed)} differ); "
                    "give another --work_dir, or remove it to start again"
                )
            self.results = previous
            self.results["settings"] = current
        self.onmt_main = os.path.join(os.path.dirname(sys.executable), "onmt-main")

    def _record(self, kind: str, key: str, value: dict) -> None:
        """Adds a result and saves ``results.json`` (written aside, then renamed)."""
        with self._lock:
            self.results[kind][key] = value
            _write_lines(self.results_path, [json.dumps(self.results, indent=1, sort_keys=True)])

    def _threads(self) -> list[str]:
        if self._workers == 1:
            return []
        threads = str(max(1, (os.cpu_count() or 1) // self._workers))
        return ["--intra_op_parallelism_threads", threads, "--inter_op_parallelism_threads", threads]

    def _run(self, command: list[str], log_name: str, on_wait: Callable[[str], None] | None = None) -> None:
        """Runs ``command`` with its output appended to ``logs/<log_name>``; calls ``on_wait``
        with the log's path every ``progress_every`` seconds while it runs."""
        log_path = os.path.join(self.work_dir, "logs", log_name)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with self._lock:
            if self._stopping:
                raise RuntimeError("stopped")
            with open(log_path, "a", encoding="utf-8") as log:
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            self._running.add(process)
        try:
            while _still_running(process, self.progress_every):
                if on_wait is not None:
                    on_wait(log_path)
        finally:
            if process.poll() is None:  # on_wait failed: no run is left behind
                process.terminate()
                process.wait()
            with self._lock:
                self._running.discard(process)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed; see {log_path}")

    def _report_training(self, key: str, model_dir: str, log_path: str) -> None:
        """Logs a training run's last step and dev loss, when they changed since last time."""
        step = last_logged_step(log_path)
        if step is None:
            return
        message = f"{key}: step {step} of {self.settings.max_step}"
        losses = _dev_losses(model_dir)
        if losses:
            message += f", dev loss {losses[max(losses)]:.2f} at step {max(losses)}"
        if self._reported.get(key) != message:
            self._reported[key] = message
            self.log(message)

    def train(self, recipe: Recipe, seed: int, paths: dict[str, str]) -> str:
        """Trains a recipe's run (or resumes it); returns its model directory."""
        key = f"{recipe.training}-seed{seed}"
        config = training_config(recipe, seed, paths, self.settings, self.work_dir)
        if key in self.results["runs"]:
            return config["model_dir"]
        config_path = os.path.join(self.work_dir, "configs", f"{key}.yml")
        os.makedirs(os.path.dirname(config_path), exist_ok=True)
        with open(config_path, "w", encoding="utf-8") as output:
            yaml.safe_dump(config, output, sort_keys=False)
        start = time.time()
        if _trained_up_to(config["model_dir"]) < self.settings.max_step:
            self.log(f"training {key} ({self.settings.max_step} updates)")
            self._run([self.onmt_main, "--model", self.settings.model_file, "--config", config_path,
                       "--seed", str(seed), *self._threads(), "train", "--with_eval"], f"{key}.train.log",
                      on_wait=lambda log_path: self._report_training(key, config["model_dir"], log_path))
        losses = _dev_losses(config["model_dir"])
        rates = read_learning_rates(config["model_dir"])
        self._record("runs", key, {
            "seconds": round(time.time() - start),
            "config": os.path.relpath(config_path, self.work_dir),
            "dev_loss": {str(step): loss for step, loss in sorted(losses.items())},
            "learning_rate": {str(step): rate for step, rate in sorted(rates.items())},
        })
        return config["model_dir"]

    def score(self, recipe: Recipe, seed: int, model_dir: str, paths: dict[str, str]) -> None:
        """Translates the test set with the recipe's model and scores it with sacrebleu."""
        key = f"{recipe.name}-seed{seed}"
        if key in self.results["scores"]:
            return
        import sacrebleu
        import sentencepiece

        if recipe.average:
            averaged = os.path.join(self.work_dir, "averaged", key)
            averaging.average_checkpoints(model_dir, averaged, averaging.Selection(max_count=recipe.average),
                                          overwrite=True)
            model_dir = averaged
        self.log(f"translating the test set with {key}")
        predictions = os.path.join(self.work_dir, "predictions", f"{key}.sp")
        os.makedirs(os.path.dirname(predictions), exist_ok=True)
        config_path = os.path.join(self.work_dir, "configs", f"{recipe.training}-seed{seed}.yml")
        self._run([self.onmt_main, "--config", config_path, paths["decoding"], "--model_dir", model_dir,
                   *self._threads(), "infer", "--features_file", paths["test_src"],
                   "--predictions_file", predictions], f"{key}.infer.log")
        processor = sentencepiece.SentencePieceProcessor(model_file=paths["spm"])
        hypotheses = [processor.decode(line.split()) for line in _read_lines(predictions)]
        references = _read_lines(paths["test_tgt_raw"])
        self._record("scores", key, {
            "recipe": recipe.name, "seed": seed,
            "bleu": round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2),
            "chrf": round(sacrebleu.corpus_chrf(hypotheses, [references]).score, 2),
        })

    def run(self, splits: dict[str, list], selected: list[Recipe],
            on_task_done: Callable[[dict], None] | None = None) -> None:
        """Prepares the data, then trains and scores every recipe for every seed.

        Each training run and the recipes that share it form one task; tasks go ``jobs``
        at a time, and ``on_task_done`` is called with the results after each. A task that
        fails does not stop the others; the first failure is raised when all are done.
        """
        os.makedirs(self.work_dir, exist_ok=True)
        paths = prepare_data(self.work_dir, splits, self.settings)
        # The test set's decoding, written once: translations running side by side read it.
        paths["decoding"] = os.path.join(self.work_dir, "configs", "decoding.yml")
        os.makedirs(os.path.dirname(paths["decoding"]), exist_ok=True)
        _write_lines(paths["decoding"], [yaml.safe_dump(
            {"params": {"beam_width": self.settings.beam_width, "maximum_decoding_length": MAX_LENGTH}})])
        tasks = training_tasks(self.settings.seeds, selected)
        done = 0

        def run_task(seed: int, sharing: list[Recipe]) -> None:
            nonlocal done
            model_dir = self.train(sharing[0], seed, paths)
            for recipe in sharing:
                self.score(recipe, seed, model_dir, paths)
            with self._lock:
                done += 1
                self.log(f"[{done}/{len(tasks)}] done: {', '.join(r.name for r in sharing)}, seed {seed}")
                if on_task_done is not None:
                    on_task_done(self.results)

        self._workers = min(self.jobs, len(tasks))
        with concurrent.futures.ThreadPoolExecutor(max_workers=self._workers) as pool:
            futures = [pool.submit(run_task, seed, sharing) for (seed, _), sharing in tasks.items()]
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
        """Terminates the running ``onmt-main`` processes and starts no other; what they
        finished is kept (a training run resumes from its last checkpoint)."""
        with self._lock:
            self._stopping = True
            running = list(self._running)
        for process in running:
            process.terminate()
        for process in running:
            process.wait()


def summary(results: dict, selected: list[Recipe]) -> list[dict]:
    """Returns one row per recipe: BLEU and chrF mean and standard deviation over seeds, and
    the mean dev loss at the last evaluation (``None`` for an average of checkpoints, whose
    dev loss is not measured)."""
    rows = []
    for recipe in selected:
        scores = [s for s in results["scores"].values() if s["recipe"] == recipe.name]
        if not scores:
            continue
        row = {"recipe": recipe.name, "description": recipe.description, "seeds": len(scores)}
        for metric in ("bleu", "chrf"):
            values = [s[metric] for s in scores]
            row[metric] = statistics.mean(values)
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        losses = [results["runs"][f"{recipe.training}-seed{s['seed']}"]["dev_loss"] for s in scores]
        last = [loss[max(loss, key=int)] for loss in losses if loss]
        row["dev_loss"] = statistics.mean(last) if last and not recipe.average else None
        rows.append(row)
    return rows


def write_report(results: dict, selected: list[Recipe], results_dir: str) -> str:
    """Writes ``results.json``, ``results.md`` (the table) and ``curves.png`` into
    ``results_dir``, each written aside then renamed; returns the table."""
    os.makedirs(results_dir, exist_ok=True)
    table = markdown_table(summary(results, selected))
    _write_lines(os.path.join(results_dir, "results.json"), [json.dumps(results, indent=1, sort_keys=True)])
    _write_lines(os.path.join(results_dir, "results.md"), table.splitlines())
    picture = os.path.join(results_dir, "curves.png")
    plot(results, selected, picture + ".tmp.png")
    os.replace(picture + ".tmp.png", picture)
    return table


def markdown_table(rows: list[dict]) -> str:
    """Formats :func:`summary` rows as a Markdown table."""
    lines = ["| recipe | seeds | BLEU (mean ± sd) | chrF (mean ± sd) | last dev loss (mean) |",
             "|---|---|---|---|---|"]
    for row in rows:
        if row["seeds"] > 1:
            bleu = f"{row['bleu']:.2f} ± {row['bleu_std']:.2f}"
            chrf = f"{row['chrf']:.1f} ± {row['chrf_std']:.1f}"
        else:
            bleu, chrf = f"{row['bleu']:.2f}", f"{row['chrf']:.1f}"
        loss = "–" if row["dev_loss"] is None else f"{row['dev_loss']:.2f}"
        lines.append(f"| {row['description']} | {row['seeds']} | {bleu} | {chrf} | {loss} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, selected: list[Recipe], path: str) -> None:
    """Draws the learning rate of each training recipe, as ``onmt-main`` logged it, and its
    dev loss against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rates, losses) = plt.subplots(1, 2, figsize=(12, 4.5))
    for training in dict.fromkeys(recipe.training for recipe in selected):
        runs = [v for k, v in results["runs"].items() if k.startswith(f"{training}-seed")]
        if not runs:
            continue
        (line,) = rates.plot(*_series(runs[0]["learning_rate"]), label=training)
        for run in runs:
            losses.plot(*_series(run["dev_loss"]), color=line.get_color(), marker="o", markersize=3,
                        alpha=0.8, label=training if run is runs[0] else None)
    rates.set(xlabel="training step", ylabel="learning rate", title="Learning rate (as onmt-main logged it)",
              ylim=(0, None))
    losses.set(xlabel="training step", ylabel="dev loss", title="Dev loss (one line per seed)")
    for axes in (rates, losses):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _series(values: dict[str, float]) -> tuple[list[int], list[float]]:
    """``{"step": value}`` as steps and values in step order."""
    steps = sorted(int(step) for step in values)
    return steps, [values[str(step)] for step in steps]
