"""A synthetic translation task made on the fly, for the demo and the tests (no download).

The target is the source reversed, with every word mapped to its own target word, so a
small Transformer learns it in a few hundred steps and the translations can be checked.
"""

from __future__ import annotations

import os
import random

SPECIAL_TOKENS = ("<blank>", "<s>", "</s>")


def source_word(index: int) -> str:
    return f"s{index}"


def target_word(index: int) -> str:
    return f"T{index}"


def translate(sentence: str) -> str:
    """Returns the reference translation of a source sentence."""
    return " ".join(target_word(int(w[1:])) for w in reversed(sentence.split()))


def write_corpus(
    directory: str,
    num_train: int = 2000,
    num_test: int = 20,
    vocab_size: int = 12,
    min_length: int = 3,
    max_length: int = 7,
    seed: int = 0,
) -> dict[str, str]:
    """Writes train, test and vocabulary files; returns their paths by name.

    Names: ``train_src``, ``train_tgt``, ``test_src``, ``test_tgt``, ``src_vocab``,
    ``tgt_vocab``.
    """
    os.makedirs(directory, exist_ok=True)
    rng = random.Random(seed)

    def sentences(count: int) -> list[str]:
        return [
            " ".join(source_word(rng.randrange(vocab_size))
                     for _ in range(rng.randint(min_length, max_length)))
            for _ in range(count)
        ]

    paths = {name: os.path.join(directory, name + ext) for name, ext in (
        ("train_src", ".txt"), ("train_tgt", ".txt"), ("test_src", ".txt"),
        ("test_tgt", ".txt"), ("src_vocab", ".vocab"), ("tgt_vocab", ".vocab"),
    )}
    for split, count in (("train", num_train), ("test", num_test)):
        source = sentences(count)
        _write_lines(paths[f"{split}_src"], source)
        _write_lines(paths[f"{split}_tgt"], [translate(s) for s in source])
    _write_lines(paths["src_vocab"], [*SPECIAL_TOKENS, *(source_word(i) for i in range(vocab_size))])
    _write_lines(paths["tgt_vocab"], [*SPECIAL_TOKENS, *(target_word(i) for i in range(vocab_size))])
    return paths


def _write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as output:
        output.write("\n".join(lines) + "\n")
