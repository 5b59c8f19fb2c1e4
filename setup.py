"""Builds onmt-trainkit (its metadata is in setup.cfg) with its start-up hook.

The hook is ``onmt_trainkit.pth``, one line, ``import onmt_trainkit``, at the root of
site-packages, where Python's ``site`` module runs it when the interpreter starts. Importing the
package only installs an import hook that activates the plugin once OpenNMT-tf is imported, so
every ``onmt-main`` of the environment (``--model_type ... --auto_config`` included) runs with
the plugin, and nothing heavy is imported at start-up (see plugin/onmt_trainkit/__init__.py).

A wheel (``pip install .``) gets the file from ``build_py``; an editable install
(``pip install -e .``, PEP 660) from ``editable_wheel``, which otherwise only adds the source
directory to ``sys.path``.
"""

from __future__ import annotations

import os

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HOOK_NAME = "onmt_trainkit.pth"
HOOK_LINE = "import onmt_trainkit\n"


def write_hook(directory: str) -> str:
    """Writes the start-up hook into ``directory`` (a wheel's root); returns its path."""
    path = os.path.join(directory, HOOK_NAME)
    with open(path, "w", encoding="utf-8") as hook:
        hook.write(HOOK_LINE)
    return path


class BuildPyWithHook(build_py):
    """``build_py`` that also puts the start-up hook at the root of the built tree."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            os.makedirs(self.build_lib, exist_ok=True)
            write_hook(self.build_lib)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode=include_bytecode)
        if self.editable_mode:
            return outputs
        return [*outputs, os.path.join(self.build_lib, HOOK_NAME)]


class EditableWheelWithHook(editable_wheel):
    """``editable_wheel`` that also puts the start-up hook at the root of the editable wheel."""

    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        outputs = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        write_hook(str(unpacked_wheel))
        return outputs


setup(cmdclass={"build_py": BuildPyWithHook, "editable_wheel": EditableWheelWithHook})
