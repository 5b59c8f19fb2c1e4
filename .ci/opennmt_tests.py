#!/usr/bin/env python
"""Runs OpenNMT-tf 2.32.0's own tests of what the plugin replaces, stock and with the plugin.

The test files (``lr_schedules_test``, ``checkpoint_test``, ``optimizer_test``,
``training_test``, ``runner_test``, ``config_test`` and their ``test_util``) come from an
OpenNMT-tf source tree at tag v2.32.0, which this script does not download: give a checkout
(``--source DIR``) or a clone's git directory (``--git_dir DIR``, read at ``--rev``). They are
copied into a temporary directory, never into this repository. The tests need
``parameterized``, installed there with pip if the environment lacks it.

Each file set runs twice in the environment's Python: with ``ONMT_TRAINKIT=0`` (stock
OpenNMT-tf) and without it (the plugin active through its start-up hook); the script checks
that the plugin was active, or not, as asked, prints both pytest summaries and exits 1 if a
test failed. ``runner_test`` needs OpenNMT-tf's downloaded test data (``testdata/``, not in
the repository): its tests are skipped unless ``--testdata DIR`` is given.

    python .ci/opennmt_tests.py --git_dir /path/to/OpenNMT-tf/.git
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

FILES = ("lr_schedules_test", "checkpoint_test", "optimizer_test", "training_test", "runner_test",
         "config_test")

CONFTEST = '''"""Makes ``opennmt.tests.test_util`` importable (the installed package has no tests) and
records whether onmt-trainkit is active."""
import importlib.util
import os
import sys
import types

import opennmt

_here = os.path.dirname(os.path.abspath(__file__))
_package = types.ModuleType("opennmt.tests")
_package.__path__ = [_here]
sys.modules["opennmt.tests"] = opennmt.tests = _package
_spec = importlib.util.spec_from_file_location("opennmt.tests.test_util", os.path.join(_here, "test_util.py"))
_package.test_util = sys.modules["opennmt.tests.test_util"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_package.test_util)


def pytest_sessionfinish(session, exitstatus):
    integration = sys.modules.get("onmt_trainkit.integration")
    active = integration is not None and integration.is_active()
    with open(os.environ["PLUGIN_STATE_FILE"], "w") as state:
        state.write("active" if active else "stock")
'''


def _read(args: argparse.Namespace, path: str) -> bytes:
    if args.source:
        with open(os.path.join(args.source, path), "rb") as source:
            return source.read()
    return subprocess.run(["git", "--git-dir", args.git_dir, "show", f"{args.rev}:{path}"],
                          check=True, capture_output=True).stdout


def _run(directory: str, stock: bool, extra_path: str | None) -> tuple[int, str, str]:
    state_file = os.path.join(directory, "state")
    if os.path.exists(state_file):
        os.remove(state_file)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PLUGIN_STATE_FILE=state_file)
    env.pop("ONMT_TRAINKIT", None)
    if stock:
        env["ONMT_TRAINKIT"] = "0"
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, env.get("PYTHONPATH")) if p)
    process = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "-o", "addopts=", *(f"{name}.py" for name in FILES)],
        cwd=os.path.join(directory, "opennmt", "tests"), env=env, capture_output=True, text=True)
    summary = process.stdout.strip().splitlines()[-1] if process.stdout.strip() else process.stderr[-2000:]
    if not os.path.exists(state_file):
        return process.returncode, summary, "unknown (pytest did not finish)"
    with open(state_file, encoding="utf-8") as state:
        return process.returncode, summary, state.read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--source", help="an OpenNMT-tf source tree at v2.32.0")
    where.add_argument("--git_dir", help="an OpenNMT-tf clone's git directory")
    parser.add_argument("--rev", default="v2.32.0", help="the revision read from --git_dir")
    parser.add_argument("--testdata", help="OpenNMT-tf's testdata directory, for runner_test")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as directory:
        tests = os.path.join(directory, "opennmt", "tests")
        os.makedirs(tests)
        for name in (*FILES, "test_util"):
            with open(os.path.join(tests, f"{name}.py"), "wb") as output:
                output.write(_read(args, f"opennmt/tests/{name}.py"))
        with open(os.path.join(tests, "conftest.py"), "w", encoding="utf-8") as output:
            output.write(CONFTEST)
        if args.testdata:
            shutil.copytree(args.testdata, os.path.join(directory, "testdata"))
        extra_path = None
        if importlib.util.find_spec("parameterized") is None:
            extra_path = os.path.join(directory, "deps")
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", extra_path,
                            "parameterized"], check=True)
        failed = False
        for label, stock in (("stock OpenNMT-tf (ONMT_TRAINKIT=0)", True), ("with onmt-trainkit", False)):
            status, summary, state = _run(directory, stock, extra_path)
            expected = "stock" if stock else "active"
            if state != expected:
                print(f"{label}: the plugin was {state}, expected {expected}")
                failed = True
            print(f"{label}: {summary}")
            failed = failed or status != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
