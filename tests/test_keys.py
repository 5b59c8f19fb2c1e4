"""The known keys: OpenNMT-tf 2.32's (against its configuration reference and its code), the
plugin's table (against its validator and its reference page), and the unknown-key warning."""

from __future__ import annotations

import glob
import os
import re

import opennmt
import pytest
import yaml

from conftest import ROOT
from onmt_trainkit import config, keys
from onmt_trainkit.errors import ConfigError

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "opennmt_2.32_configuration.yml")
OPENNMT_SOURCE = os.path.dirname(opennmt.__file__)


def _opennmt_reference() -> dict:
    with open(REFERENCE, encoding="utf-8") as reference:
        return yaml.safe_load(reference)


def _opennmt_code() -> str:
    texts = []
    for path in glob.glob(os.path.join(OPENNMT_SOURCE, "**", "*.py"), recursive=True):
        if not path.endswith("_test.py"):
            with open(path, encoding="utf-8") as source:
                texts.append(source.read())
    return "\n".join(texts)


def test_every_key_of_opennmts_reference_is_known():
    reference = _opennmt_reference()
    assert set(reference) == keys.TOP_LEVEL
    code = _opennmt_code()
    for section in keys.SECTIONS:
        for name in reference[section]:
            assert keys.is_known(section, name), f"{section}.{name}"
        # Every OpenNMT-tf key the list holds is in the reference, or read by OpenNMT-tf's code.
        for name in keys.OPENNMT_KEYS[section] - set(reference[section]):
            assert f'"{name}"' in code, f"{section}.{name} is neither in the reference nor in OpenNMT-tf's code"


def test_every_key_that_opennmts_code_reads_is_known():
    # The section configurations of OpenNMT-tf's runner, evaluator and models, read with
    # .get("key") or ["key"].
    pattern = re.compile(r'\b(train|eval|infer|score|data)_config(?:\.get\(|\[)"(\w+)"')
    found = set(pattern.findall(_opennmt_code()))
    params = set(re.findall(r'\bparams(?:\.get\(|\[)"(\w+)"', _opennmt_code()))
    assert len(found) > 40 and len(params) > 25  # the patterns still match OpenNMT-tf's code
    for section, name in sorted(found):
        assert keys.is_known(section, name), f"{section}.{name}"
    # A variable named params also holds other mappings there: the infer and score sections
    # (infer.n_best...), a tokenizer's and a regularization's ({type, params}), and the
    # optimizer parameters of the V1 conversion.
    not_params = {"type", "params", "weight_decay", "clipnorm", "n_best", "with_scores", "with_alignments",
                  "with_token_level"}
    for name in sorted(params - not_params):
        assert keys.is_known("params", name), f"params.{name}"


def test_every_key_that_the_plugin_reads_is_in_its_table():
    names = {(key.section, key.name) for key in keys.PLUGIN_KEYS}
    pattern = re.compile(r'\b(params|train)(?:\.get\(|\[)"(\w+)"')
    found = set()
    for path in glob.glob(os.path.join(ROOT, "plugin", "onmt_trainkit", "*.py")):
        with open(path, encoding="utf-8") as source:
            found |= set(pattern.findall(source.read()))
    assert ("params", "warmup_steps") in found and ("train", "max_step") in found
    assert found <= names, sorted(found - names)


@pytest.mark.parametrize("key", [k for k in keys.PLUGIN_KEYS if k.bounds], ids=lambda k: k.path)
def test_each_bounded_key_is_checked_with_its_bounds(key):
    # An accepted example, and a value past the lower bound refused with the key's path.
    base = {"learning_rate": 1e-3, "optimizer": "Adam"}
    section = key.section

    def validate(value):
        if section == "params":
            params = {**base, key.name: value}
            config.learning_rate_schedule(params, max_step=100)
            config.weight_decay(params)
        elif section == "params.decay_params":
            config.learning_rate_schedule({**base, "decay_type": "WarmupStableDecay",
                                           "decay_params": {"total_steps": 10, key.name: value}})
        elif key.name == "max_step":
            config.learning_rate_schedule({**base, "decay_type": "PolynomialDecay",
                                           "decay_params": {"decay_steps": "max_step"}}, max_step=value)
        else:
            config.moving_average_settings({"moving_average_decay": 0.99, key.name: value})

    validate(key.example)
    below = key.bounds["minimum"] - (0 if key.bounds.get("min_inclusive", True) is False else 1)
    shown = key.path.removeprefix("params.") if section == "params.decay_params" else key.path  # decay_params.<arg>
    with pytest.raises(ConfigError, match=f"^{re.escape(shown)} must be"):
        validate(below)


def test_the_reference_page_shows_the_table():
    with open(os.path.join(ROOT, "docs", "configuration.md"), encoding="utf-8") as page:
        text = page.read()
    assert keys.reference_table() in text, (
        "docs/configuration.md is not the key table: python -c 'from onmt_trainkit import keys; "
        "print(keys.reference_table())' prints it")
    documented = set(re.findall(r"^\| `((?:params|train)\.[\w.]+)` \|", text, re.MULTILINE))
    assert documented == {key.path for key in keys.PLUGIN_KEYS}


def test_the_examples_of_the_unbounded_keys_are_values_they_take():
    decay_fraction = keys.plugin_key("params.decay_params.decay_fraction")
    config.learning_rate_schedule({"learning_rate": 1e-3, "decay_type": "WarmupStableDecay",
                                   "decay_params": {"total_steps": 10, decay_fraction.name: decay_fraction.example}})
    assert config.moving_average_settings(
        {"moving_average_decay": keys.plugin_key("train.moving_average_decay").example,
         "moving_average_eval_all": keys.plugin_key("train.moving_average_eval_all").example}).eval_all
    assert config.weight_decay({"optimizer": "Adam", "weight_decay": 0.01,
                                "weight_decay_exclude": keys.plugin_key("params.weight_decay_exclude").example})


def _warning(path: str, closest: str | None = None) -> str:
    hint = f" (did you mean {closest}?)" if closest else ""
    declare = f" (a model of your own that reads it can say so: onmt_trainkit.keys.declare('{path}'))"
    return (f"unknown key {path}{hint}: neither OpenNMT-tf 2.32 nor onmt-trainkit reads it"
            + (declare if "." in path else ""))


@pytest.mark.parametrize("configuration,expected", [
    ({"train": {"moving_avrage_decay": 0.9999}}, [("train.moving_avrage_decay", "moving_average_decay")]),
    ({"params": {"warmup_step": 4000}}, [("params.warmup_step", "warmup_steps")]),
    ({"data": {"sorce_vocabulary": "v.txt", "source_1_vocabulary": "a", "target_2_3_tokenization": "b",
               "vocabulary": "c"}}, [("data.sorce_vocabulary", "source_vocabulary")]),
    ({"trian": {"max_step": 5}, "eval": {"scorer": "bleu"}, "infer": {"xyzzy": 1}},
     [("trian", "train"), ("eval.scorer", "scorers"), ("infer.xyzzy", None)]),
    ({"model_dir": "m", "params": {"weight_decay": 0.1, "moving_average_decay": 0.9}, "train": {"max_step": 5}},
     [("params.moving_average_decay", "train.moving_average_decay")]),
    ({"train": {"beam_width": 4, "max_stp": 5}}, [("train.beam_width", "params.beam_width"), ("train.max_stp", "max_step")]),
])
def test_unknown_keys(configuration, expected):
    assert [unknown.message() for unknown in keys.unknown_keys(configuration)] == [_warning(*e) for e in expected]
    assert _warning("train.x", "y") == ("unknown key train.x (did you mean y?): neither OpenNMT-tf 2.32 nor onmt-trainkit "
                                        "reads it (a model of your own that reads it can say so: "
                                        "onmt_trainkit.keys.declare('train.x'))")


def test_a_model_declares_its_own_keys():
    config = {"data": {"my_lexicon": "l.txt"}, "params": {"my_option": 1}}
    assert [u.path for u in keys.unknown_keys(config)] == ["data.my_lexicon", "params.my_option"]
    try:
        keys.declare("data.my_lexicon", "params.my_option")
        assert list(keys.unknown_keys(config)) == []
    finally:
        keys._declared.clear()
    for bad in ("my_lexicon", "model.x", "data.", "data.a.b"):
        with pytest.raises(ValueError, match=rf"^onmt_trainkit.keys.declare: '{re.escape(bad)}' must be section.name "
                                             "with a section of data, params, train, eval, infer, score$"):
            keys.declare(bad)
