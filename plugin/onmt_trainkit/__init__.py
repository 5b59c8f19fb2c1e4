"""onmt-trainkit: learning-rate schedules, a moving average of the weights and checkpoint
averaging for OpenNMT-tf 2.32.

Importing this package activates the plugin: at once if OpenNMT-tf is already imported
(as when ``onmt-main --model`` loads a model file that imports it), otherwise as soon as
OpenNMT-tf is imported. The installed start-up hook (``onmt_trainkit.pth`` in site-packages)
imports this package when Python starts, so every ``onmt-main`` of the environment, with a
catalog model (``--model_type``) as with a model file, runs with the plugin. This import
only installs an import hook: TensorFlow and OpenNMT-tf are not imported until something
imports them.

The environment variable ``ONMT_TRAINKIT=0`` (or ``false``, ``no``, ``off``) turns automatic
activation off for the commands that see it: neither the start-up hook nor ``import
onmt_trainkit`` in a model file activates the plugin, and OpenNMT-tf runs stock. An explicit
:func:`activate` call still activates it.

Activating twice is harmless; :func:`deactivate` restores stock OpenNMT-tf. Activation refuses
any OpenNMT-tf outside the 2.32 series. Modules that do not need OpenNMT-tf (such as
:mod:`onmt_trainkit.averaging`) can be used without importing TensorFlow.
"""

import os
import sys

# Python imports this module at start-up (the hook): it imports nothing that ``site`` has not
# imported already (not even ``__future__`` or ``types``), so that the hook costs next to nothing.

__version__ = "0.1.0"

OPENNMT_VERSION = "2.32."
"""The OpenNMT-tf release series the plugin is built for."""

ENVIRONMENT_VARIABLE = "ONMT_TRAINKIT"
"""Set to ``0`` (or ``false``, ``no``, ``off``) to keep the plugin off: stock OpenNMT-tf."""

_OFF = ("0", "false", "no", "off")


def enabled() -> bool:
    """Returns ``False`` when ``ONMT_TRAINKIT`` asks for stock OpenNMT-tf."""
    return os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower() not in _OFF


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
    the ``opennmt`` package is first imported.

    Some modules of this package import OpenNMT-tf themselves (:mod:`onmt_trainkit.schedules`
    derives from its classes). When one of them is what first imports ``opennmt``, activation
    needs that very module, still half-loaded: it then waits until the package's modules being
    loaded have finished. The finder sees those modules' loading for this purpose.
    """

    _loading = 0
    """The number of this package's modules being executed under the finder."""
    _pending = False
    """OpenNMT-tf was imported while some of them were, and activation waits for them."""

    @classmethod
    def install(cls) -> None:
        if not any(isinstance(finder, cls) for finder in sys.meta_path):
            sys.meta_path.insert(0, cls())

    @classmethod
    def uninstall(cls) -> None:
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, cls)]
        cls._pending = False

    @classmethod
    def _activate_when_ready(cls) -> None:
        if cls._loading:
            cls._pending = True
            return
        cls.uninstall()
        activate()

    def find_spec(self, name: str, path: object = None, target: object = None):
        if name != "opennmt" and not name.startswith(__name__ + "."):
            return None
        owner = type(self)

        def wrap(execute):
            if name == "opennmt":

                def exec_module(module: object) -> None:
                    execute(module)
                    owner._activate_when_ready()

            else:

                def exec_module(module: object) -> None:
                    owner._loading += 1
                    try:
                        execute(module)
                    finally:
                        owner._loading -= 1
                    if owner._pending:
                        owner._activate_when_ready()

            return exec_module

        return _spec_executing_with(self, name, path, target, wrap)


def _spec_executing_with(finder: object, name: str, path: object, target: object, wrap):
    """The spec that the finders after ``finder`` in ``sys.meta_path`` (all others if it is
    not there) give for module ``name``, its loader's ``exec_module`` replaced by
    ``wrap(exec_module)`` (code to run around the module's execution); as found when the
    loader cannot execute modules. Two hooking finders never consult each other in a loop."""
    spec = None
    finders = sys.meta_path
    if finder in finders:
        finders = finders[finders.index(finder) + 1:]
    for other in finders:
        if other is not finder and hasattr(other, "find_spec"):
            spec = other.find_spec(name, path, target)
            if spec is not None:
                break
    if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
        return spec
    spec.loader.exec_module = wrap(spec.loader.exec_module)
    return spec


if enabled():
    if "opennmt" in sys.modules:
        activate()
    else:
        _ActivateOnImport.install()
