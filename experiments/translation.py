"""A translation experiment comparing training recipes on a real corpus, resumable.

The corpus is the example sentences of the Ding German-English dictionary (or any corpus of
parallel lines), segmented with a joint SentencePiece model; the test set's translations are
scored with sacrebleu. The machinery (training runs side by side, resume, results) is
:mod:`experiments.runner`'s.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass

from experiments import runner
from experiments.runner import SPECIAL_TOKENS, Recipe, read_lines, write_lines

DING = "/usr/share/trans/de-en"
# Longer training examples are skipped; no translation is decoded longer (a model early in
# training may repeat itself until the limit).
MAX_LENGTH = 100
COLUMNS = [("BLEU", "bleu", 2), ("chrF", "chrf", 1)]
"""The table's score columns: (header, metric, decimals)."""
PANELS = [runner.Panel("learning_rate", "learning rate", "Learning rate (as onmt-main logged it)"),
          runner.Panel("dev_loss", "dev loss", "Dev loss (one line per seed)")]
"""The pictures of ``curves.png``."""


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
class Settings(runner.Settings):
    """The translation experiment's budget and model; the defaults fit the whole table in
    about an hour on 2 cores (:data:`BUDGETS`)."""

    vocab_size: int = 8000
    beam_width: int = 1


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


class Experiment(runner.Experiment):
    """The translation experiment: SentencePiece pieces in and out, BLEU and chrF on the test set."""

    settings: Settings

    def prepare_data(self, splits: dict[str, list]) -> dict[str, str]:
        """Writes raw and SentencePiece-encoded files and the vocabulary; returns their paths."""
        import sentencepiece

        data_dir = os.path.join(self.work_dir, "data")
        os.makedirs(data_dir, exist_ok=True)
        paths = {}
        for split, pairs in splits.items():
            for side, index in (("src", 0), ("tgt", 1)):
                paths[f"{split}_{side}_raw"] = os.path.join(data_dir, f"{split}.raw.{side}")
                write_lines(paths[f"{split}_{side}_raw"], [pair[index] for pair in pairs])
        model_prefix = os.path.join(data_dir, "spm")
        if not os.path.exists(model_prefix + ".model"):
            joint = os.path.join(data_dir, "joint.raw")
            write_lines(joint, read_lines(paths["train_src_raw"]) + read_lines(paths["train_tgt_raw"]))
            sentencepiece.SentencePieceTrainer.train(
                input=joint, model_prefix=model_prefix, vocab_size=self.settings.vocab_size,
                character_coverage=1.0, model_type="unigram", input_sentence_size=1_000_000,
                shuffle_input_sentence=True, minloglevel=2, num_threads=2, hard_vocab_limit=False,
            )
        processor = sentencepiece.SentencePieceProcessor(model_file=model_prefix + ".model")
        paths["spm"] = model_prefix + ".model"
        for split in splits:
            for side in ("src", "tgt"):
                paths[f"{split}_{side}"] = os.path.join(data_dir, f"{split}.sp.{side}")
                encoded = processor.encode(read_lines(paths[f"{split}_{side}_raw"]), out_type=str)
                write_lines(paths[f"{split}_{side}"], [" ".join(pieces) for pieces in encoded])
        pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
        paths["vocab"] = os.path.join(data_dir, "vocab.txt")
        write_lines(paths["vocab"], [*SPECIAL_TOKENS, *(p for p in pieces if p not in ("<unk>", "<s>", "</s>"))])
        # The test set's decoding, written once: translations running side by side read it.
        paths["decoding"] = runner.decoding_config(self.work_dir, self.settings.beam_width, MAX_LENGTH)
        return paths

    def training_config(self, recipe: Recipe, seed: int, paths: dict[str, str]) -> dict:
        """The ``onmt-main`` configuration of a recipe's training run."""
        return runner.training_config(self, recipe, seed, paths, MAX_LENGTH, eval_batch_size=64,
                                      infer={"batch_size": 64, "batch_type": "examples", "length_bucket_width": 1})

    def measure(self, recipe: Recipe, seed: int, model_dir: str, paths: dict[str, str], name: str) -> dict:
        """Translates the test set; returns its BLEU and chrF (sacrebleu, on the decoded text)."""
        import sacrebleu
        import sentencepiece

        self.log(f"translating the test set with {name}")
        predictions = os.path.join(self.work_dir, "predictions", f"{name}.sp")
        os.makedirs(os.path.dirname(predictions), exist_ok=True)
        self.execute([self.onmt_main, "--config", self.config_path(recipe, seed), paths["decoding"], "--model_dir",
                      model_dir, *self.threads(), "infer", "--features_file", paths["test_src"],
                      "--predictions_file", predictions], f"{name}.infer.log")
        processor = sentencepiece.SentencePieceProcessor(model_file=paths["spm"])
        hypotheses = [processor.decode(line.split()) for line in read_lines(predictions)]
        references = read_lines(paths["test_tgt_raw"])
        return {"bleu": round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2),
                "chrf": round(sacrebleu.corpus_chrf(hypotheses, [references]).score, 2)}


def summary(results: dict, selected: list[Recipe]) -> list[dict]:
    """One row per recipe: BLEU and chrF mean and standard deviation over seeds, and the mean
    dev loss at the last evaluation (:func:`experiments.runner.summary`)."""
    return runner.summary(results, selected, tuple(metric for _, metric, _ in COLUMNS))


def table(results: dict, selected: list[Recipe]) -> str:
    """The results as a Markdown table, a row per recipe (:func:`summary`)."""
    return runner.markdown_table(summary(results, selected), COLUMNS)


def write_report(results: dict, selected: list[Recipe], results_dir: str) -> None:
    """Writes ``results.json``, ``results.md`` (the table) and ``curves.png`` (per recipe, the
    learning rate as ``onmt-main`` logged it and the dev loss) into ``results_dir``."""
    runner.write_report(results, table(results, selected), results_dir,
                        lambda path: runner.plot(results, selected, path, PANELS))
