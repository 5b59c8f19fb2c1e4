"""Another OpenNMT-tf version: nothing of it is patched, ``onmt-main`` is refused in one line.
No TensorFlow: ``onmt-main`` says which extra installs it, in one line.

A stand-in ``opennmt`` package of version 2.33.0, first on ``PYTHONPATH``, takes the place of the
installed OpenNMT-tf in subprocesses; its ``onmt-main`` prints a line when it runs. A stand-in
``tensorflow`` package that cannot be found takes the place of TensorFlow.
"""

from __future__ import annotations

import os
import sys

import pytest

import onmt_trainkit
from conftest import BIN, run

MESSAGE = (
    f"onmt-trainkit {onmt_trainkit.__version__} supports OpenNMT-tf 2.32.x only, but OpenNMT-tf 2.33.0 is "
    "installed: install opennmt-tf==2.32.0, or set ONMT_TRAINKIT=0 to run stock OpenNMT-tf (pip uninstall "
    "onmt-trainkit removes the plugin)"
)
STOCK_MAIN_RAN = "the stand-in onmt-main ran"


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("stand_in")
    package = root / "opennmt"
    (package / "bin").mkdir(parents=True)
    (package / "__init__.py").write_text('__version__ = "2.33.0"\n')
    (package / "bin" / "__init__.py").write_text("")
    (package / "bin" / "main.py").write_text(f"def main():\n    print({STOCK_MAIN_RAN!r})\n    return 0\n")
    return str(root)


def _run(stand_in: str, command: list[str], **variables: str):
    return run(command, check=False, PYTHONPATH=stand_in, PYTHONWARNINGS="default", **variables)


def test_onmt_main_exits_2_with_one_line(stand_in):
    process = _run(stand_in, [os.path.join(BIN, "onmt-main"), "--model_type", "Transformer", "train"])
    assert process.returncode == 2
    assert process.stderr == f"onmt-main: error: {MESSAGE}\n"
    assert STOCK_MAIN_RAN not in process.stdout


def test_onmt_main_runs_stock_with_onmt_trainkit_0(stand_in):
    process = _run(stand_in, [os.path.join(BIN, "onmt-main")], ONMT_TRAINKIT="0")
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == STOCK_MAIN_RAN
    assert process.stderr == ""


def test_import_opennmt_warns_once_and_leaves_it_stock(stand_in):
    code = (
        "import sys, opennmt, opennmt.bin.main\n"
        "import onmt_trainkit\n"
        "print(opennmt.__version__, 'onmt_trainkit.integration' in sys.modules, 'tensorflow' in sys.modules)\n"
        "opennmt.bin.main.main()\n"
    )
    process = _run(stand_in, [sys.executable, "-c", code])
    # The plugin's modules are not imported, nothing is patched; onmt-main's main is refused even
    # when called from code.
    assert process.stdout.splitlines()[0] == "2.33.0 False False"
    assert process.returncode == 2
    assert process.stderr.count("UnsupportedVersionWarning") == 1
    assert f"UnsupportedVersionWarning: {MESSAGE}\n" in process.stderr
    assert process.stderr.endswith(f"onmt-main: error: {MESSAGE}\n")


def test_explicit_activation_raises(stand_in):
    code = (
        "import onmt_trainkit\n"
        "try:\n"
        "    onmt_trainkit.activate()\n"
        "except onmt_trainkit.UnsupportedVersionError as error:\n"
        "    print(error)\n"
    )
    process = _run(stand_in, [sys.executable, "-c", code], ONMT_TRAINKIT="0")
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == MESSAGE


def test_the_supported_version_is_accepted():
    assert onmt_trainkit.version_message("2.32.0") is None
    assert onmt_trainkit.version_message("2.31.0").startswith(f"onmt-trainkit {onmt_trainkit.__version__} supports OpenNMT-tf 2.32.x only")


@pytest.fixture(scope="module")
def without_tensorflow(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("no_tensorflow")
    (root / "tensorflow").mkdir()
    (root / "tensorflow" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'tensorflow'\", name='tensorflow')\n")
    return str(root)


def test_onmt_main_without_tensorflow_names_the_extras(without_tensorflow):
    process = _run(without_tensorflow, [os.path.join(BIN, "onmt-main"), "--model_type", "Transformer", "train"])
    assert process.returncode == 2
    assert process.stderr == f"onmt-main: error: {onmt_trainkit.NO_TENSORFLOW}\n"


def test_import_opennmt_without_tensorflow_names_the_extras(without_tensorflow):
    code = ("try:\n    import opennmt\nexcept ModuleNotFoundError as error:\n"
            "    print(error.name, '|', error, '|', type(error.__cause__).__name__)\n")
    process = _run(without_tensorflow, [sys.executable, "-c", code])
    assert process.stdout.strip() == f"tensorflow | {onmt_trainkit.NO_TENSORFLOW} | ModuleNotFoundError"
    # Stock (the plugin off): OpenNMT-tf's own error.
    process = _run(without_tensorflow, [sys.executable, "-c", code], ONMT_TRAINKIT="0")
    assert process.stdout.strip() == "tensorflow | No module named 'tensorflow' | NoneType"
