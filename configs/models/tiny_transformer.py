"""A tiny Transformer (2 layers, 32 units) for the demo and quick experiments."""

import opennmt

import onmt_trainkit  # noqa: F401  (activates the plugin for every command on this model)


def model():
    return opennmt.models.Transformer(
        source_inputter=opennmt.inputters.WordEmbedder(embedding_size=32),
        target_inputter=opennmt.inputters.WordEmbedder(embedding_size=32),
        num_layers=2,
        num_units=32,
        num_heads=2,
        ffn_inner_dim=64,
        dropout=0.1,
        attention_dropout=0.1,
        ffn_dropout=0.1,
    )
