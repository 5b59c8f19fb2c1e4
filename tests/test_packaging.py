"""The wheel holds the plugin alone and its start-up hook, every module it installs imports, and
the installed hook activates the plugin without importing TensorFlow at start-up."""

from __future__ import annotations

import os
import pkgutil
import re
import subprocess
import sys
import sysconfig
import zipfile

import pytest

import onmt_trainkit
from conftest import ROOT, run

HOOK = "onmt_trainkit.pth"


def python(*args: str, **env: str) -> subprocess.CompletedProcess:
    """Runs this environment's Python; ``ONMT_TRAINKIT`` only if given."""
    variables = {k: v for k, v in os.environ.items() if k != "ONMT_TRAINKIT"}
    process = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                             env={**variables, "TF_CPP_MIN_LOG_LEVEL": "2", **env})
    assert process.returncode == 0, process.stderr[-3000:]
    return process


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    """The wheel that ``pip wheel --no-deps .`` builds."""
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(dist), ROOT])
    (built,) = dist.iterdir()
    return str(built)


def _requirements(wheel: str) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    return [line[len("Requires-Dist: "):] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]


def test_the_wheel_requires_tensorflow_only_through_its_extras(wheel):
    tensorflow = [r for r in _requirements(wheel) if r.startswith(("tensorflow", "opennmt-tf"))]
    assert "opennmt-tf==2.32.0" in tensorflow
    for requirement in tensorflow:
        if requirement.startswith("tensorflow"):
            assert re.search(r'extra == "(cpu|gpu)"', requirement), requirement
    assert any("tensorflow-cpu" in r and 'extra == "cpu"' in r for r in tensorflow)
    assert any(r.startswith("tensorflow<") or r.startswith("tensorflow>") for r in tensorflow
               if 'extra == "gpu"' in r)


def _stand_in(site: str, name: str, version: str) -> None:
    """An installed distribution as pip sees it: a ``.dist-info`` with its metadata."""
    info = os.path.join(site, f"{name.replace('-', '_')}-{version}.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w", encoding="utf-8") as metadata:
        metadata.write(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    for file, text in (("INSTALLER", "pip\n"), ("RECORD", "")):
        with open(os.path.join(info, file), "w", encoding="utf-8") as output:
            output.write(text)


def _dry_run(environment, wheel: str, *requirements: str) -> subprocess.CompletedProcess:
    """``pip install --dry-run`` of ``requirements`` into ``environment``, from nothing but the wheel."""
    return run([sys.executable, "-m", "pip", "--python", str(environment / "bin" / "python"), "install", "--dry-run",
                "--no-index", "--find-links", os.path.dirname(wheel), *requirements], check=False)


def test_a_gpu_environment_keeps_its_tensorflow(tmp_path, wheel):
    # An environment where tensorflow 2.13.1 (the GPU build's name) and the other requirements are
    # installed: installing the wheel wants nothing more, so pip, given no index, succeeds.
    environment = tmp_path / "gpu"
    run([sys.executable, "-m", "venv", "--without-pip", str(environment)])
    site = run([str(environment / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
               ).stdout.strip()
    for name, version in (("tensorflow", "2.13.1"), ("opennmt-tf", "2.32.0"), ("numpy", "1.24.3"),
                          ("PyYAML", "6.0.1"), ("crc32c", "2.4")):
        _stand_in(site, name, version)
    process = _dry_run(environment, wheel, wheel)
    assert process.returncode == 0, process.stderr
    assert f"Would install onmt-trainkit-{onmt_trainkit.__version__}" in process.stdout, process.stdout
    assert "tensorflow" not in process.stdout.split("Would install", 1)[1].replace("onmt-trainkit", "")
    # The control: the extra [cpu] asks for tensorflow-cpu, which no index offers here.
    process = _dry_run(environment, wheel, f"onmt-trainkit[cpu] @ file://{wheel}")
    assert process.returncode != 0 and "tensorflow-cpu" in process.stderr, process.stderr


def test_wheel_installs_the_plugin_alone_with_its_start_up_hook(tmp_path, wheel):
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
