"""Transformer base (Vaswani et al., 2017): 6 layers, 512 units, 8 heads, FFN 2048."""

import opennmt

import onmt_trainkit  # noqa: F401  (activates the plugin for every command on this model)


def model():
    return opennmt.models.TransformerBase()
