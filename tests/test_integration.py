"""Activation, deactivation and the OpenNMT-tf version check."""

from __future__ import annotations

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
        assert lr_schedules.get_lr_schedule_class("NoamDecay") is stock_noam
        with pytest.raises(ValueError, match="Unknown learning rate schedule: WarmupStableDecay"):
            lr_schedules.get_lr_schedule_class("WarmupStableDecay")
    finally:
        onmt_trainkit.activate()
    assert opennmt.training.Trainer is integration.Trainer


def test_other_opennmt_versions_are_refused():
    integration.check_version("2.32.0")
    with pytest.raises(RuntimeError, match=r"onmt-trainkit supports OpenNMT-tf 2\.32\.x only, but "
                                           r"OpenNMT-tf 2\.31\.0 is installed: install opennmt-tf==2\.32\.0"):
        integration.check_version("2.31.0")


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
