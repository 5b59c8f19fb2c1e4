"""Activation, deactivation and the OpenNMT-tf version check."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import opennmt
import pytest
from opennmt.schedules import lr_schedules

import onmt_trainkit
from conftest import run
from onmt_trainkit import integration, schedules


def test_import_activates_and_deactivate_restores_stock_opennmt():
    stock_noam = opennmt.schedules.NoamDecay
    assert integration.is_active()
    assert hasattr(importlib.import_module("opennmt.bin.main").main, "__wrapped__")  # onmt-main's, once imported
    assert opennmt.training.Trainer is integration.Trainer
    assert lr_schedules.get_lr_schedule_class("NoamDecay") is schedules.NoamDecay
    assert lr_schedules.get_lr_schedule_class("WarmupStableDecay") is schedules.WarmupStableDecay
    onmt_trainkit.activate()  # a second activation changes nothing
    assert opennmt.training.Trainer is integration.Trainer
    try:
        onmt_trainkit.deactivate()
        assert not integration.is_active()
        assert opennmt.training.Trainer.__module__ == "opennmt.training"
        assert opennmt.models.Model.get_optimizer.__module__ == "opennmt.models.model"
        assert opennmt.Runner._finalize_config.__module__ == "opennmt.runner"
        assert opennmt.runner._auto_tune_batch_size.__module__ == "opennmt.runner"
        assert not hasattr(opennmt.bin.main.main, "__wrapped__")
        assert lr_schedules.get_lr_schedule_class("NoamDecay") is stock_noam
        with pytest.raises(ValueError, match="Unknown learning rate schedule: WarmupStableDecay"):
            lr_schedules.get_lr_schedule_class("WarmupStableDecay")
    finally:
        onmt_trainkit.activate()
    assert opennmt.training.Trainer is integration.Trainer
    assert hasattr(opennmt.bin.main.main, "__wrapped__")


def test_hooking_finders_do_not_consult_each_other_in_a_loop():
    # One finder per activation; even two (a reloaded module) import onmt-main's module once, wrapped.
    python(
        "import sys, onmt_trainkit, opennmt\n"
        "from onmt_trainkit import integration\n"
        "onmt_trainkit.activate()\n"
        "hooks = [f for f in sys.meta_path if isinstance(f, integration._WrapMainOnImport)]\n"
        "assert len(hooks) == 1, hooks\n"
        "sys.meta_path.insert(0, integration._WrapMainOnImport())\n"
        "import opennmt.bin.main\n"
        "assert not hasattr(opennmt.bin.main.main.__wrapped__, '__wrapped__')\n"
    )


def test_onmt_main_run_as_a_module_does_not_warn():
    # OpenNMT-tf's batch-size trials run `python -m opennmt.bin.main`: the plugin, active in them,
    # must not have imported that module before runpy executes it (a RuntimeWarning, an error here).
    process = run([sys.executable, "-W", "error::RuntimeWarning", "-m", "opennmt.bin.main", "--version"])
    assert process.stdout.strip() == f"OpenNMT-tf {opennmt.__version__}"


def test_activation_waits_for_opennmt_and_averaging_needs_no_tensorflow():
    code = (
        "import sys, onmt_trainkit.averaging\n"
        "assert 'tensorflow' not in sys.modules and 'opennmt' not in sys.modules\n"
        "import opennmt\n"
        "from onmt_trainkit import integration\n"
        "assert integration.is_active()\n"
        "assert opennmt.training.Trainer is integration.Trainer\n"
    )
    run([sys.executable, "-c", code])


def python(code: str, **env: str) -> None:
    """Runs ``code`` in a new interpreter of this environment (start-up hook included)."""
    variables = {k: v for k, v in os.environ.items() if k != "ONMT_TRAINKIT"}
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**variables, "TF_CPP_MIN_LOG_LEVEL": "2", **env})
    assert process.returncode == 0, process.stderr[-3000:]


ACTIVE = (
    "import opennmt, sys\n"
    "from onmt_trainkit import integration, schedules\n"
    "assert integration.is_active()\n"
    "assert opennmt.training.Trainer is integration.Trainer\n"
    "assert opennmt.schedules.lr_schedules.get_lr_schedule_class('NoamDecay') is schedules.NoamDecay\n"
)


@pytest.mark.parametrize("module", ["schedules", "config"])
def test_activation_when_a_module_of_the_package_imports_opennmt_first(module):
    """onmt_trainkit.schedules derives from OpenNMT-tf's classes: importing it first imports
    OpenNMT-tf half-way through it, and activation waits until it is loaded."""
    python(f"import onmt_trainkit.{module}\n" + ACTIVE)


def test_onmt_trainkit_0_keeps_opennmt_stock_even_with_import_onmt_trainkit():
    stock = (
        "import sys, opennmt, onmt_trainkit\n"  # as a model file does, once OpenNMT-tf is loaded
        "assert 'onmt_trainkit.integration' not in sys.modules\n"
        "assert opennmt.training.Trainer.__module__ == 'opennmt.training'\n"
        "assert opennmt.schedules.lr_schedules.get_lr_schedule_class('NoamDecay') is opennmt.schedules.NoamDecay\n"
        "onmt_trainkit.activate()\n"  # an explicit call still activates
    )
    python(stock + ACTIVE, ONMT_TRAINKIT="0")


@pytest.mark.parametrize("value,enabled", [("0", False), ("false", False), (" Off ", False), ("NO", False),
                                           ("1", True), ("", True), ("yes", True)])
def test_what_onmt_trainkit_values_mean(monkeypatch, value, enabled):
    monkeypatch.setenv("ONMT_TRAINKIT", value)
    assert onmt_trainkit.enabled() is enabled
