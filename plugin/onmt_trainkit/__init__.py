"""onmt-trainkit: learning-rate schedules, a moving average of the weights and checkpoint
averaging for OpenNMT-tf 2.32.

Importing this package activates the plugin: at once if OpenNMT-tf is already imported
(as when ``onmt-main --model`` loads a model file that imports it), otherwise as soon as
OpenNMT-tf is imported. Activating twice is harmless; :func:`deactivate` restores stock
OpenNMT-tf. Activation refuses any OpenNMT-tf outside the 2.32 series. Modules that do not
need OpenNMT-tf (such as :mod:`onmt_trainkit.averaging`) can be used without importing
TensorFlow.
"""

from __future__ import annotations

import sys
from types import ModuleType

__version__ = "0.1.0"

OPENNMT_VERSION = "2.32."
"""The OpenNMT-tf release series the plugin is built for."""


def activate() -> None:
    """Activates the plugin in OpenNMT-tf (imports it); does nothing if already active."""
    from onmt_trainkit import integration

    integration.activate()


def deactivate() -> None:
    """Restores stock OpenNMT-tf. :func:`activate` turns the plugin on again."""
    _ActivateOnImport.uninstall()
    if "onmt_trainkit.integration" in sys.modules:
        sys.modules["onmt_trainkit.integration"].deactivate()


class _ActivateOnImport:
    """An import hook (a ``sys.meta_path`` finder) that activates the plugin right after
    the ``opennmt`` package is first imported."""

    @classmethod
    def install(cls) -> None:
        if not any(isinstance(finder, cls) for finder in sys.meta_path):
            sys.meta_path.insert(0, cls())

    @classmethod
    def uninstall(cls) -> None:
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, cls)]

    def find_spec(self, name: str, path: object = None, target: object = None):
        if name != "opennmt":
            return None
        import importlib.util  # here: only when OpenNMT-tf is imported, so not to slow other uses

        self.uninstall()
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            activate()

        spec.loader.exec_module = exec_module
        return spec


if "opennmt" in sys.modules:
    activate()
else:
    _ActivateOnImport.install()
