"""The wheel holds the plugin alone and its start-up hook, every module it installs imports, and
the installed hook activates the plugin without importing TensorFlow at start-up."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
import sysconfig
import zipfile

from conftest import ROOT, run

HOOK = "onmt_trainkit.pth"


def python(*args: str, **env: str) -> subprocess.CompletedProcess:
    """Runs this environment's Python; ``ONMT_TRAINKIT`` only if given."""
    variables = {k: v for k, v in os.environ.items() if k != "ONMT_TRAINKIT"}
    process = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                             env={**variables, "TF_CPP_MIN_LOG_LEVEL": "2", **env})
    assert process.returncode == 0, process.stderr[-3000:]
    return process


def test_wheel_installs_the_plugin_alone_with_its_start_up_hook(tmp_path):
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "dist"), ROOT])
    (wheel,) = (tmp_path / "dist").iterdir()
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert archive.read(HOOK).decode() == "import onmt_trainkit\n"
        record = archive.read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
    assert f"\n{HOOK}," in "\n" + record  # pip removes it on uninstall
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"onmt_trainkit", HOOK}, top

    target = tmp_path / "site"
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)])
    assert (target / HOOK).read_text() == "import onmt_trainkit\n"
    modules = sorted(info.name for info in pkgutil.walk_packages([str(target / "onmt_trainkit")], "onmt_trainkit."))
    assert "onmt_trainkit.integration" in modules and "onmt_trainkit.averaging" in modules
    assert not [name for name in modules if name.endswith(("experiment", "toy_corpus"))]
    code = "import importlib, onmt_trainkit, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) + \
        "assert onmt_trainkit.__file__.startswith(sys.argv[1]), onmt_trainkit.__file__\n"
    env = dict(os.environ, PYTHONPATH=str(target), TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, env=env,
                             cwd=str(tmp_path))
    assert process.returncode == 0, process.stderr[-3000:]

    # Installed, the hook runs at start-up (site processes the .pth files of a site directory):
    # the package is imported, TensorFlow and OpenNMT-tf are not, and OpenNMT-tf's import
    # activates the plugin from the wheel's copy.
    start = (
        "import site, sys\n"
        "site.addsitedir(sys.argv[1])\n"
        "assert 'onmt_trainkit' in sys.modules and sys.modules['onmt_trainkit'].__file__.startswith(sys.argv[1])\n"
        "assert 'tensorflow' not in sys.modules and 'opennmt' not in sys.modules\n"
        f"site.addsitedir({sysconfig.get_paths()['purelib']!r})\n"  # TensorFlow, OpenNMT-tf
        "import opennmt\n"
        "integration = sys.modules.get('onmt_trainkit.integration')\n"
    )
    python("-S", "-c", start + "assert integration.is_active()\n"
           "assert integration.__file__.startswith(sys.argv[1])\n", str(target))
    python("-S", "-c", start + "assert integration is None\n", str(target), ONMT_TRAINKIT="0")


def test_this_environment_has_the_hook():
    """``make`` installs the package editable (``pip install -e``): the hook is there too."""
    hook = os.path.join(sysconfig.get_paths()["purelib"], HOOK)
    with open(hook, encoding="utf-8") as lines:
        assert lines.read() == "import onmt_trainkit\n"
    state = python("-c", "import sys; print('onmt_trainkit' in sys.modules, 'tensorflow' in sys.modules, "
                         "[type(f).__name__ for f in sys.meta_path][0])").stdout.split()
    assert state == ["True", "False", "_ActivateOnImport"]
    state = python("-c", "import sys; print('onmt_trainkit' in sys.modules, "
                         "any(type(f).__name__ == '_ActivateOnImport' for f in sys.meta_path))",
                   ONMT_TRAINKIT="0").stdout.split()
    assert state == ["True", "False"]


def test_editable_wheel_has_the_hook(tmp_path):
    """What ``pip install -e .`` installs: the PEP 660 wheel that setuptools builds."""
    code = "import sys; from setuptools import build_meta; print(build_meta.build_editable(sys.argv[1]))"
    process = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert process.returncode == 0, process.stderr[-3000:]
    wheel = tmp_path / process.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(HOOK).decode() == "import onmt_trainkit\n"
        paths = [name for name in archive.namelist() if name.startswith("__editable__") and name.endswith(".pth")]
        assert paths, archive.namelist()
