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

Activating twice is harmless; :func:`deactivate` restores stock OpenNMT-tf. The plugin is
built for OpenNMT-tf 2.32 only, and checks the version before it imports or patches anything of
OpenNMT-tf's: with another version, automatic activation leaves OpenNMT-tf stock and warns once
(:class:`UnsupportedVersionWarning`), ``onmt-main`` exits with status 2 and one line on standard
error, and an explicit :func:`activate` raises :class:`UnsupportedVersionError`. Modules that
do not need OpenNMT-tf (such as :mod:`onmt_trainkit.averaging`) can be used without importing
TensorFlow.
"""

import os
import sys

# Python imports this module at start-up (the hook): it imports nothing that ``site`` has not
# imported already (not even ``__future__`` or ``types``), so that the hook costs next to nothing.

__version__ = "0.2.0"

OPENNMT_VERSION = "2.32."
"""The OpenNMT-tf release series the plugin is built for."""

_MAIN_MODULE = "opennmt.bin.main"
"""The module whose ``main`` is ``onmt-main``."""

ENVIRONMENT_VARIABLE = "ONMT_TRAINKIT"
"""Set to ``0`` (or ``false``, ``no``, ``off``) to keep the plugin off: stock OpenNMT-tf."""

_OFF = ("0", "false", "no", "off")


def enabled() -> bool:
    """Returns ``False`` when ``ONMT_TRAINKIT`` asks for stock OpenNMT-tf."""
    return os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower() not in _OFF


class UnsupportedVersionError(RuntimeError):
    """The installed OpenNMT-tf is not the version the plugin is built for."""


class UnsupportedVersionWarning(UserWarning):
    """Automatic activation found another OpenNMT-tf version and left OpenNMT-tf stock."""


def version_message(version: str) -> str | None:
    """Returns why the plugin cannot run with OpenNMT-tf ``version``, or ``None`` if it can."""
    if version.startswith(OPENNMT_VERSION):
        return None
    return (
        f"onmt-trainkit {__version__} supports OpenNMT-tf {OPENNMT_VERSION}x only, but OpenNMT-tf "
        f"{version} is installed: install opennmt-tf==2.32.0, or set ONMT_TRAINKIT=0 to run stock "
        "OpenNMT-tf (pip uninstall onmt-trainkit removes the plugin)"
    )


def _installed_version() -> str:
    """The version of the imported ``opennmt`` package (imports it if needed)."""
    import opennmt

    return str(getattr(opennmt, "__version__", "unknown"))


def activate() -> None:
    """Activates the plugin in OpenNMT-tf (imports it); does nothing if already active.

    Raises:
      UnsupportedVersionError: if OpenNMT-tf is not of the 2.32 series; nothing is patched.
    """
    message = version_message(_installed_version())
    if message is not None:
        raise UnsupportedVersionError(message)
    from onmt_trainkit import integration

    integration.activate()


def _activate_automatically() -> None:
    """Activates the plugin, or, with another OpenNMT-tf version, leaves OpenNMT-tf stock: a
    warning for code that imports it, and ``onmt-main`` refused (:func:`_refuse_main`)."""
    message = version_message(_installed_version())
    if message is None:
        activate()
        return
    if not _running_onmt_main():
        import warnings  # onmt-main says it in its error line instead

        warnings.warn(message, UnsupportedVersionWarning, stacklevel=2)
    if _MAIN_MODULE in sys.modules:
        _refuse_main(sys.modules[_MAIN_MODULE], message)
    else:
        _RefuseMainOnImport.message = message
        _RefuseMainOnImport.install()


NO_TENSORFLOW = (
    "OpenNMT-tf needs TensorFlow 2.13, which is not installed: pip install 'onmt-trainkit[cpu]' (no GPU) or "
    "'onmt-trainkit[gpu]' (a GPU with CUDA), or pip install tensorflow==2.13.*"
)
"""What importing OpenNMT-tf says when TensorFlow is missing (the plugin's extras install it)."""


def _running_onmt_main() -> bool:
    """Whether this process is the ``onmt-main`` command."""
    return os.path.basename(getattr(sys, "argv", None) and sys.argv[0] or "") == "onmt-main"


def _no_tensorflow(error: ModuleNotFoundError) -> None:
    """Reports a missing TensorFlow: ``onmt-main`` exits with status 2 and one line; an import
    in code raises ``ModuleNotFoundError`` with :data:`NO_TENSORFLOW`."""
    if _running_onmt_main():
        sys.stderr.write(f"onmt-main: error: {NO_TENSORFLOW}\n")
        sys.exit(2)
    raise ModuleNotFoundError(NO_TENSORFLOW, name=error.name) from error


def _refuse_main(module: object, message: str) -> None:
    """Replaces ``onmt-main``'s ``main`` by one that exits with status 2 and ``message``."""

    def refused_main() -> None:
        sys.stderr.write(f"onmt-main: error: {message}\n")
        sys.exit(2)

    module.main = refused_main


def deactivate() -> None:
    """Restores stock OpenNMT-tf. :func:`activate` turns the plugin on again."""
    _ActivateOnImport.uninstall()
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _RefuseMainOnImport)]
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
        _activate_automatically()

    def find_spec(self, name: str, path: object = None, target: object = None):
        if name != "opennmt" and not name.startswith(__name__ + "."):
            return None
        owner = type(self)

        def wrap(execute):
            if name == "opennmt":

                def exec_module(module: object) -> None:
                    try:
                        execute(module)
                    except ModuleNotFoundError as error:
                        if error.name != "tensorflow":
                            raise
                        _no_tensorflow(error)
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


class _RefuseMainOnImport:
    """An import hook that refuses ``onmt-main`` (:func:`_refuse_main`) once
    ``opennmt.bin.main`` is imported, when OpenNMT-tf is of another version."""

    message = ""

    @classmethod
    def install(cls) -> None:
        if not any(isinstance(finder, cls) for finder in sys.meta_path):
            sys.meta_path.insert(0, cls())

    def find_spec(self, name: str, path: object = None, target: object = None):
        if name != _MAIN_MODULE:
            return None

        def wrap(execute):
            def exec_module(module: object) -> None:
                execute(module)
                _refuse_main(module, type(self).message)

            return exec_module

        return _spec_executing_with(self, name, path, target, wrap)


if enabled():
    if "opennmt" in sys.modules:
        _activate_automatically()
    else:
        _ActivateOnImport.install()
