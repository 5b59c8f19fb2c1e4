"""The project's front matter: a short README, the license, the changelog, the version; and the
documentation site's build, which fails on a broken link or anchor (``make docs``)."""

from __future__ import annotations

import ast
import glob
import os
import shutil
import subprocess
import sys

import pytest

import conftest
import onmt_trainkit
from conftest import BIN, ROOT


def test_the_readme_is_short_and_opens_with_the_two_commands():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as readme:
        lines = readme.read().splitlines()
    assert len(lines) <= 250
    first_block = lines[lines.index("```bash") + 1:lines.index("```bash") + 3]
    assert [line.split()[:2] for line in first_block] == [["make", "demo"], ["make", "test"]]


def test_license_changelog_and_version():
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as license_file:
        assert license_file.readline().strip() == "MIT License"
    with open(os.path.join(ROOT, "CHANGELOG.md"), encoding="utf-8") as changelog:
        headings = [line for line in changelog if line.startswith("## ")]
    assert onmt_trainkit.__version__ == "0.2.0"
    assert headings[0].startswith(f"## {onmt_trainkit.__version__} ") and headings[1].startswith("## 0.1.0")


def _site_copy(tmp_path) -> str:
    """The documentation's sources, copied as in the repository."""
    root = tmp_path / "repository"
    shutil.copytree(os.path.join(ROOT, "docs"), root / "docs")
    shutil.copytree(os.path.join(ROOT, "experiments"), root / "experiments",
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    for name in ("mkdocs.yml", "README.md", "CHANGELOG.md", "LICENSE"):
        shutil.copy(os.path.join(ROOT, name), root / name)
    return str(root)


def _build(root: str) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, "mkdocs"), "build", "--strict", "--site-dir", os.path.join(root, "site")],
                          cwd=root, capture_output=True, text=True)


@pytest.mark.skipif(not os.path.exists(os.path.join(BIN, "mkdocs")), reason="mkdocs is not installed (the docs extra)")
@pytest.mark.parametrize("broken", [None, ("docs/quickstart.md", "(schedules.md)", "(schedule.md)"),
                                    ("README.md", "(docs/horovod.md)", "(docs/horovod.md#no-such-heading)"),
                                    ("experiments/README.md", "(g2p/curves.png)", "(g2p/curve.png)")])
def test_the_site_builds_and_a_broken_link_fails_it(tmp_path, broken):
    root = _site_copy(tmp_path)
    if broken is not None:
        path, good, bad = broken
        with open(os.path.join(root, path), encoding="utf-8") as page:
            text = page.read()
        assert good in text
        with open(os.path.join(root, path), "w", encoding="utf-8") as page:
            page.write(text.replace(good, bad, 1))
    process = _build(root)
    if broken is None:
        assert process.returncode == 0, process.stderr
        assert os.path.exists(os.path.join(root, "site", "experiments", "index.html"))
        assert os.path.exists(os.path.join(root, "site", "overview", "index.html"))
    else:
        assert process.returncode != 0 and "WARNING" in process.stderr, process.stderr
        assert bad.strip("()").split("/")[-1] in process.stderr, process.stderr


def test_python_is_this_environments():
    assert os.path.dirname(sys.executable) == BIN


def test_the_onmt_marker_names_existing_tests():
    """tests/conftest.py marks by name the tests that start OpenNMT-tf processes: every name is one."""
    names = set()
    for path in glob.glob(os.path.join(ROOT, "tests", "test_*.py")):
        with open(path, encoding="utf-8") as source:
            names |= {node.name for node in ast.walk(ast.parse(source.read())) if isinstance(node, ast.FunctionDef)}
    assert set(conftest.ONMT_TESTS) <= names, set(conftest.ONMT_TESTS) - names
    for module in conftest.ONMT_MODULES:
        assert os.path.exists(os.path.join(ROOT, "tests", module)), module
