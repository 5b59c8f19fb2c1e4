"""Files for the checkpoint tools: on the local disk, or through TensorFlow's file systems.

A path with a scheme (``gs://``, ``s3://``, ``hdfs://``, ``ram://``...) is read and written with
``tf.io.gfile``, TensorFlow being imported only then; any other path with the operating system.
Failures of either kind are :class:`StorageError`, an ``OSError`` whose message names the path.
A scheme that TensorFlow has no file system for is one too (``tf.io.gfile`` would otherwise
report such a directory as missing); ``s3://`` and ``hdfs://`` come with ``tensorflow-io``,
imported then if installed.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import threading
from types import ModuleType

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class StorageError(OSError):
    """A file operation that failed; the message names the path."""


def is_remote(path: str) -> bool:
    """Returns ``True`` for a path with a scheme, handled by ``tf.io.gfile``."""
    return bool(_SCHEME.match(path))


def _tensorflow(path: str) -> ModuleType:
    try:
        import tensorflow as tf
    except ImportError:
        raise StorageError(
            f"{path}: paths with a scheme need TensorFlow: run onmt-main average_checkpoints, "
            "or install tensorflow"
        ) from None
    return tf


def _check_scheme(path: str, tf: ModuleType) -> None:
    """Raises :class:`StorageError` if TensorFlow has no file system for the scheme of ``path``."""
    registered = getattr(tf.io.gfile, "get_registered_schemes", None)
    if registered is None:
        return
    scheme = path.split("://", 1)[0]
    if scheme in registered():
        return
    try:
        import tensorflow_io  # noqa: F401  (registers s3://, hdfs://...)
    except ImportError:
        pass
    if scheme not in registered():
        raise StorageError(
            f"{path}: TensorFlow has no file system for {scheme}:// (it has "
            f"{', '.join(s + '://' for s in sorted(registered()) if s)}; s3:// and hdfs:// need "
            "pip install tensorflow-io)"
        )


class _Remote:
    """Runs a ``tf.io.gfile`` call, turning TensorFlow's errors into :class:`StorageError`."""

    def __init__(self, path: str):
        self.path = path
        self.tf = _tensorflow(path)
        _check_scheme(path, self.tf)
        self.gfile = self.tf.io.gfile

    def __enter__(self) -> _Remote:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: object) -> None:
        if error is not None and isinstance(error, self.tf.errors.OpError):
            raise StorageError(f"{self.path}: {error.message}") from None


def join(directory: str, name: str) -> str:
    """Joins a file name to a directory path."""
    return posixpath.join(directory, name) if is_remote(directory) else os.path.join(directory, name)


def split(path: str) -> tuple[str, str]:
    """Returns (parent directory, name) of ``path`` (made absolute if local)."""
    if is_remote(path):
        parent, name = posixpath.split(path.rstrip("/"))
        return parent, name
    absolute = os.path.abspath(path)
    return os.path.dirname(absolute), os.path.basename(absolute)


def normalize(path: str) -> str:
    """Returns ``path`` with symbolic links resolved (local) or without a trailing ``/``."""
    return path.rstrip("/") if is_remote(path) else os.path.realpath(path)


def exists(path: str) -> bool:
    """Returns ``True`` if ``path`` exists (a local dangling symbolic link counts)."""
    if not is_remote(path):
        return os.path.lexists(path)
    with _Remote(path) as remote:
        return remote.gfile.exists(path)


def isdir(path: str) -> bool:
    """Returns ``True`` if ``path`` is a directory."""
    if not is_remote(path):
        return os.path.isdir(path)
    with _Remote(path) as remote:
        return remote.gfile.isdir(path)


def isfile(path: str) -> bool:
    """Returns ``True`` if ``path`` is a file (not a directory)."""
    if not is_remote(path):
        return os.path.isfile(path)
    with _Remote(path) as remote:
        return remote.gfile.exists(path) and not remote.gfile.isdir(path)


def is_plain_file(path: str) -> bool:
    """Returns ``True`` if ``path`` is a file and not a symbolic link."""
    return isfile(path) and (is_remote(path) or not os.path.islink(path))


def listdir(path: str) -> list[str]:
    """Returns the names in directory ``path``, sorted."""
    if not is_remote(path):
        try:
            return sorted(os.listdir(path))
        except OSError as error:
            raise StorageError(f"{path}: {error.strerror}") from None
    with _Remote(path) as remote:
        return sorted(name.rstrip("/") for name in remote.gfile.listdir(path))


def read(path: str) -> bytes:
    """Returns the content of file ``path``."""
    if not is_remote(path):
        with open(path, "rb") as content:
            return content.read()
    with _Remote(path) as remote, remote.gfile.GFile(path, "rb") as content:
        return content.read()


def write(path: str, data: bytes) -> None:
    """Writes file ``path`` (replacing it)."""
    if not is_remote(path):
        with open(path, "wb") as content:
            content.write(data)
        return
    with _Remote(path) as remote:
        if remote.gfile.exists(path):  # some file systems (ram://) append to an existing file
            remote.gfile.remove(path)
        with remote.gfile.GFile(path, "wb") as content:
            content.write(data)


def mkdir(path: str) -> None:
    """Creates directory ``path``, whose parent exists; locally, fails if it exists."""
    if not is_remote(path):
        os.mkdir(path)
        return
    with _Remote(path) as remote:
        remote.gfile.mkdir(path)


def makedirs(path: str) -> None:
    """Creates directory ``path`` and its parents as needed."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)
        return
    with _Remote(path) as remote:
        remote.gfile.makedirs(path)


def rename(source: str, destination: str) -> None:
    """Renames file or (locally) directory ``source``, replacing a file ``destination``."""
    if not is_remote(source):
        os.replace(source, destination)
        return
    with _Remote(source) as remote:
        remote.gfile.rename(source, destination, overwrite=True)


def remove(path: str) -> None:
    """Removes file ``path``."""
    if not is_remote(path):
        os.remove(path)
        return
    with _Remote(path) as remote:
        remote.gfile.remove(path)


def rmtree(path: str) -> None:
    """Removes directory ``path`` and everything in it; a local symbolic link is not followed."""
    if not is_remote(path):
        shutil.rmtree(path)
        return
    with _Remote(path) as remote:
        remote.gfile.rmtree(path)


class RandomReader:
    """Reads a file at given offsets, from several threads at once."""

    def __init__(self, path: str):
        self.path = path
        self._remote = _Remote(path) if is_remote(path) else None
        self._lock = threading.Lock()
        if self._remote is None:
            self._fd = os.open(path, os.O_RDONLY)
        else:
            with self._remote:
                if not self._remote.gfile.exists(path):
                    raise FileNotFoundError(path)
                self._file = self._remote.gfile.GFile(path, "rb")

    def read_into(self, view: memoryview, offset: int) -> int:
        """Reads up to ``len(view)`` bytes at ``offset`` into ``view``; returns how many were read:
        fewer near the end of the file, or whenever the system reads less (0 at the end)."""
        if self._remote is None:
            return os.preadv(self._fd, [view], offset)
        with self._lock, self._remote:
            if offset >= self._file.size():
                return 0
            self._file.seek(offset)
            data = self._file.read(len(view))
        view[: len(data)] = data
        return len(data)

    def size(self) -> int:
        """Returns the size of the file."""
        if self._remote is None:
            return os.fstat(self._fd).st_size
        with self._remote:
            return self._file.size()

    def close(self) -> None:
        """Closes the file."""
        if self._remote is None:
            os.close(self._fd)
        else:
            self._file.close()


class Writer:
    """Writes a new file: locally at any offset from any thread; through ``tf.io.gfile``
    in order only (object stores append), which :attr:`in_order` tells."""

    def __init__(self, path: str):
        self.path = path
        self._remote = _Remote(path) if is_remote(path) else None
        self.in_order = self._remote is not None
        self._position = 0
        if self._remote is None:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        else:
            with self._remote:
                if self._remote.gfile.exists(path):  # some file systems (ram://) append to it
                    self._remote.gfile.remove(path)
                self._file = self._remote.gfile.GFile(path, "wb")

    def write_at(self, view: memoryview, offset: int) -> None:
        """Writes ``view`` at ``offset`` (for an in-order writer, the end of what is written)."""
        if self._remote is None:
            while view:
                written = os.pwrite(self._fd, view, offset)
                offset += written
                view = view[written:]
            return
        if offset != self._position:
            raise ValueError(f"{self.path} is written in order: at {self._position}, asked for {offset}")
        with self._remote:
            self._file.write(bytes(view))
        self._position += len(view)

    def close(self) -> None:
        """Closes the file, flushing it."""
        if self._remote is None:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        elif self._file is not None:
            with self._remote:
                self._file.close()
            self._file = None
