"""The wheel holds the plugin alone, and every module it installs imports."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
import zipfile

from conftest import ROOT, run


def test_wheel_installs_the_plugin_alone(tmp_path):
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "dist"), ROOT])
    (wheel,) = (tmp_path / "dist").iterdir()
    with zipfile.ZipFile(wheel) as archive:
        packages = {name.split("/")[0] for name in archive.namelist() if not name.split("/")[0].endswith(".dist-info")}
    assert packages == {"onmt_trainkit"}, packages

    target = tmp_path / "site"
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)])
    modules = sorted(info.name for info in pkgutil.walk_packages([str(target / "onmt_trainkit")], "onmt_trainkit."))
    assert "onmt_trainkit.integration" in modules and "onmt_trainkit.averaging" in modules
    assert not [name for name in modules if name.endswith(("experiment", "toy_corpus"))]
    code = "import importlib, onmt_trainkit, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) + \
        "assert onmt_trainkit.__file__.startswith(sys.argv[1]), onmt_trainkit.__file__\n"
    env = dict(os.environ, PYTHONPATH=str(target), TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, env=env,
                             cwd=str(tmp_path))
    assert process.returncode == 0, process.stderr[-3000:]
