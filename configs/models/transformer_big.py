"""Transformer big (Vaswani et al., 2017): 6 layers, 1024 units, 16 heads, FFN 4096."""

import opennmt

import onmt_trainkit  # noqa: F401  (activates the plugin for every command on this model)


def model():
    return opennmt.models.TransformerBig()
