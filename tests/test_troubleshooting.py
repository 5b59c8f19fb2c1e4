"""docs/troubleshooting.md lists the refusal messages: each one it shows is still one that the
code prints.

A message in the page is an entry ``- `message` `` whose variable parts are written ``<...>``
(and which ends with ``...`` where the message goes on with text of other strings of the code). The code's messages are its string
literals and f-strings (adjacent literals joined, as Python joins them), each formatted value a
variable part. A page message is one the code prints when it matches a message of the code in
full, its variable parts standing for any text.
"""

from __future__ import annotations

import ast
import glob
import os
import re

import pytest

from conftest import ROOT

PAGE = os.path.join(ROOT, "docs", "troubleshooting.md")
SOURCES = [*glob.glob(os.path.join(ROOT, "plugin", "onmt_trainkit", "*.py")), os.path.join(ROOT, "tools", "demo.py")]
ENTRY = re.compile(r"^\s*- `(.+)`\s*$", re.MULTILINE)
MINIMUM_LITERAL = 12
"""A message of the code whose fixed text is shorter than this (``f"{a}: {b}"``) is too
general to identify a page message."""


def _templates(path: str) -> list[list[str | None]]:
    """The strings of the source file at ``path``: fixed text, and ``None`` for a formatted value."""
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            found.append([part.value if isinstance(part, ast.Constant) else None for part in node.values])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append([node.value])
    return found


def _pattern(template: list[str | None]) -> re.Pattern | None:
    fixed = "".join(part for part in template if part is not None)
    if len(fixed.strip()) < MINIMUM_LITERAL:
        return None
    return re.compile("".join(".+?" if part is None else re.escape(part) for part in template), re.DOTALL)


CODE = [pattern for path in SOURCES for template in _templates(path) if (pattern := _pattern(template))]


def _page_messages() -> list[str]:
    with open(PAGE, encoding="utf-8") as page:
        return ENTRY.findall(page.read())


def _printed(message: str) -> bool:
    """Whether the code prints ``message`` (its ``<...>`` parts any text). A message ending with
    ``...`` is built of several strings of the code: it must start with one of them in full."""
    if message.endswith("..."):
        return any(pattern.match(message[:-3]) for pattern in CODE)
    return any(pattern.fullmatch(message) for pattern in CODE)


def test_the_page_lists_messages():
    assert len(_page_messages()) >= 60


@pytest.mark.parametrize("message", _page_messages() if os.path.exists(PAGE) else [])
def test_each_message_is_one_the_code_prints(message):
    assert _printed(message), f"docs/troubleshooting.md shows a message that the code no longer prints: {message}"


def test_a_changed_message_is_caught():
    assert _printed("params.warmup_steps must be an integer >= 0, got <value>")
    assert not _printed("params.warmup_steps should be an integer >= 0, got <value>")
