"""A small Transformer for CPU experiments: 3 layers, 128 units, 4 heads, FFN 512, shared embeddings."""

import opennmt

import onmt_trainkit  # noqa: F401  (activates the plugin for every command on this model)


def model():
    return opennmt.models.Transformer(
        source_inputter=opennmt.inputters.WordEmbedder(embedding_size=128),
        target_inputter=opennmt.inputters.WordEmbedder(embedding_size=128),
        num_layers=3,
        num_units=128,
        num_heads=4,
        ffn_inner_dim=512,
        dropout=0.1,
        attention_dropout=0.1,
        ffn_dropout=0.1,
        share_embeddings=opennmt.models.EmbeddingsSharingLevel.ALL,
    )
