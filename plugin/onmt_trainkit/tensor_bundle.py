"""Reading and writing TensorFlow checkpoints (the "tensor bundle" format) without TensorFlow.

A checkpoint ``PREFIX`` is an index, ``PREFIX.index``, and data shards,
``PREFIX.data-SSSSS-of-NNNNN``. The index is a LevelDB-style sorted table whose empty key
holds a ``BundleHeaderProto`` and whose other keys are tensor names holding a
``BundleEntryProto`` (dtype, shape, shard, offset, size, masked CRC32C of the bytes). The
data files hold the raw little-endian tensor bytes. Tensors can be read piece by piece into
a buffer the caller reuses, so reading costs no more memory than that buffer.
"""

from __future__ import annotations

import functools
import io
import math
import struct
import threading
from dataclasses import dataclass, field
from typing import BinaryIO
from collections.abc import Iterable, Iterator

import crc32c as _crc32c
import numpy as np

from onmt_trainkit import protowire as pw
from onmt_trainkit import storage

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_BLOCK_TRAILER_SIZE = 5
_NO_COMPRESSION = 0
_MASK_DELTA = 0xA282EAD8

# tensorflow/core/framework/types.proto
DT_STRING = 7
DT_BFLOAT16 = 14
NUMPY_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<i4"),
    4: np.dtype("u1"),
    5: np.dtype("<i2"),
    6: np.dtype("i1"),
    9: np.dtype("<i8"),
    10: np.dtype("?"),
    DT_BFLOAT16: np.dtype("<u2"),
    17: np.dtype("<u2"),
    19: np.dtype("<f2"),
    22: np.dtype("<u4"),
    23: np.dtype("<u8"),
}
MAX_READ = (1 << 31) - 4096
"""The most bytes asked of one read (what Linux reads at most at a time)."""

FLOAT_DTYPES = frozenset({1, 2, DT_BFLOAT16, 19})
DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 7: "string", 9: "int64", 10: "bool",
               14: "bfloat16", 19: "float16"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing, truncated, corrupt or unsupported."""


def mask_crc(crc: int) -> int:
    """Masks a CRC32C as TensorFlow and LevelDB store it."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def crc32c(data: bytes | memoryview, crc: int = 0) -> int:
    """Returns the CRC32C of ``data``, continuing from ``crc``."""
    return _crc32c.crc32c(data, crc)


@dataclass
class Entry:
    """One tensor of a checkpoint: where its bytes are and what they hold."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc: int
    proto: bytes = field(repr=False, default=b"")

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype, f"dtype {self.dtype}")


@functools.cache
def _parse_shape(shape_proto: bytes) -> tuple[int, ...]:
    return tuple(
        next((v for n, _, v in pw.fields(dim) if n == 1), 0)
        for number, _, dim in pw.fields(shape_proto)
        if number == 2
    )


def _parse_entry(name: str, value: bytes, path: str) -> Entry:
    dtype = shard_id = offset = size = crc = 0
    shape: tuple[int, ...] = ()
    for number, _, field_value in pw.fields(value):
        if number == 1:
            dtype = field_value
        elif number == 2:
            shape = _parse_shape(field_value)
        elif number == 3:
            shard_id = field_value
        elif number == 4:
            offset = field_value
        elif number == 5:
            size = field_value
        elif number == 6:
            crc = field_value
        elif number == 7:
            raise CheckpointError(f"tensor {name} is partitioned (sliced), which is not supported")
    itemsize = NUMPY_DTYPES[dtype].itemsize if dtype in NUMPY_DTYPES else None
    if itemsize is not None and size != math.prod(shape) * itemsize:
        raise CheckpointError(
            f"{path} is corrupt: {name} is {list(shape)} {DTYPE_NAMES.get(dtype, dtype)} but has {size} bytes"
        )
    return Entry(name, dtype, shape, shard_id, offset, size, crc, value)


def _read_block(data: bytes, offset: int, size: int, path: str) -> list[tuple[bytes, bytes]]:
    """Returns the (key, value) entries of the table block at ``offset``."""
    end = offset + size
    if end + _BLOCK_TRAILER_SIZE > len(data):
        raise CheckpointError(f"{path} is truncated")
    block = data[offset:end]
    compression = data[end]
    if compression != _NO_COMPRESSION:
        raise CheckpointError(f"{path} uses a compressed index, which is not supported")
    (stored_crc,) = struct.unpack_from("<I", data, end + 1)
    if mask_crc(crc32c(data[offset : end + 1])) != stored_crc:
        raise CheckpointError(f"{path} is corrupt (index block checksum mismatch)")
    if size < 4:
        raise CheckpointError(f"{path} is corrupt (block too small)")
    (num_restarts,) = struct.unpack_from("<I", block, size - 4)
    limit = size - 4 - 4 * num_restarts
    if limit < 0:
        raise CheckpointError(f"{path} is corrupt (bad block)")
    entries, position, key = [], 0, b""
    while position < limit:
        shared, position = pw.read_varint(block, position)
        non_shared, position = pw.read_varint(block, position)
        value_size, position = pw.read_varint(block, position)
        if shared > len(key) or position + non_shared + value_size > limit:
            raise CheckpointError(f"{path} is corrupt (bad block entry)")
        key = key[:shared] + block[position : position + non_shared]
        position += non_shared
        entries.append((key, block[position : position + value_size]))
        position += value_size
    return entries


def _read_handle(data: bytes, position: int) -> tuple[int, int, int]:
    offset, position = pw.read_varint(data, position)
    size, position = pw.read_varint(data, position)
    return offset, size, position


def read_fully(file: storage.RandomReader, view: memoryview, offset: int) -> int:
    """Fills ``view`` with the bytes of ``file`` at ``offset``; returns how many there were
    (fewer than ``len(view)`` only at the end of the file).

    A read returns fewer bytes than asked whenever the system decides to (Linux reads at
    most 2 GiB - 4 KiB at a time; network file systems less): reads go on until the view is
    full or a read returns nothing. Each read asks for at most :data:`MAX_READ` bytes.
    """
    done = 0
    while done < len(view):
        count = file.read_into(view[done : done + MAX_READ], offset + done)
        if count <= 0:
            break
        done += count
    return done


class CheckpointReader:
    """Reads the tensors of one checkpoint, given its prefix (e.g. ``run/ckpt-5000``).

    The prefix may be a local path or, through ``tf.io.gfile``, a remote one (``gs://``...).
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        index_path = prefix + ".index"
        try:
            data = storage.read(index_path)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {prefix} not found (no {index_path})") from None
        except IsADirectoryError:
            raise CheckpointError(f"checkpoint {prefix}: {index_path} is a directory") from None
        if len(data) < _FOOTER_SIZE or struct.unpack_from("<Q", data, len(data) - 8)[0] != _TABLE_MAGIC:
            raise CheckpointError(f"{index_path} is not a TensorFlow checkpoint index (bad footer)")
        self.header: list = []
        self.entries: dict[str, Entry] = {}
        try:
            _, _, position = _read_handle(data, len(data) - _FOOTER_SIZE)
            index_offset, index_size, _ = _read_handle(data, position)
            for _, handle in _read_block(data, index_offset, index_size, index_path):
                block_offset, block_size, _ = _read_handle(handle, 0)
                for key, value in _read_block(data, block_offset, block_size, index_path):
                    if key == b"":
                        self.header = list(pw.fields(value))
                    else:
                        name = key.decode("utf-8")
                        self.entries[name] = _parse_entry(name, value, index_path)
        except (pw.DecodeError, UnicodeDecodeError) as error:
            reason = "a tensor name is not UTF-8" if isinstance(error, UnicodeDecodeError) else error
            raise CheckpointError(f"{index_path} is corrupt ({reason})") from None
        self.num_shards = pw.first(self.header, 1, 1)
        if not isinstance(self.num_shards, int) or not 1 <= self.num_shards <= 99999:
            raise CheckpointError(f"{index_path} is corrupt (it gives {self.num_shards} data files)")
        if pw.first(self.header, 2, 0) != 0:
            raise CheckpointError(f"{prefix} is big-endian, which is not supported")
        for entry in self.entries.values():
            if entry.shard_id >= self.num_shards:
                raise CheckpointError(
                    f"{index_path} is corrupt ({entry.name} is in data file {entry.shard_id} of {self.num_shards})"
                )
        self._shards: dict[int, storage.RandomReader] = {}
        self._lock = threading.Lock()

    def data_path(self, shard_id: int) -> str:
        """Returns the path of data shard ``shard_id``."""
        return f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}"

    def _shard(self, shard_id: int) -> storage.RandomReader:
        with self._lock:  # threads may read one checkpoint side by side
            if shard_id not in self._shards:
                path = self.data_path(shard_id)
                try:
                    self._shards[shard_id] = storage.RandomReader(path)
                except FileNotFoundError:
                    raise CheckpointError(f"checkpoint {self.prefix}: missing data file {path}") from None
            return self._shards[shard_id]

    def _string_header(self, entry: Entry, shard: storage.RandomReader) -> tuple[int, int]:
        """Checks the lengths of string tensor ``entry`` against their checksum; returns the
        running CRC32C after them and the size of what precedes the strings.

        TensorFlow stores a string tensor of n elements as n varint lengths, the masked
        CRC32C of the lengths (each as a little-endian uint32, or uint64 past 4 GiB), then
        the strings; the tensor's CRC32C continues the lengths' over those 4 bytes and the
        strings.
        """
        count = math.prod(entry.shape)
        head = bytearray(min(entry.size, 10 * count + 4))
        corrupt = CheckpointError(f"checkpoint {self.prefix} is corrupt: bad lengths in string tensor {entry.name}")
        if read_fully(shard, memoryview(head), entry.offset) != len(head):
            raise self._truncated(entry, shard)
        crc, position, total = 0, 0, 0
        try:
            for _ in range(count):
                length, position = pw.read_varint(head, position)
                crc = crc32c(struct.pack("<I" if length <= 0xFFFFFFFF else "<Q", length), crc)
                total += length
        except pw.DecodeError:
            raise corrupt from None
        stored = head[position : position + 4]
        if len(stored) != 4 or position + 4 + total != entry.size:
            raise corrupt
        if struct.unpack("<I", stored)[0] != mask_crc(crc):
            raise CheckpointError(
                f"checkpoint {self.prefix} is corrupt: checksum mismatch for the lengths of {entry.name}"
            )
        return crc32c(stored, crc), position + 4

    def _open(self, entry: Entry) -> storage.RandomReader:
        """Returns the data file of ``entry``, checked to hold all of its bytes."""
        shard = self._shard(entry.shard_id)
        if entry.offset + entry.size > shard.size():
            raise self._truncated(entry, shard)
        return shard

    def _truncated(self, entry: Entry, shard: storage.RandomReader) -> CheckpointError:
        return CheckpointError(
            f"checkpoint {self.prefix} is truncated: {entry.name} ends at byte "
            f"{entry.offset + entry.size} of {self.data_path(entry.shard_id)}, which has {shard.size()}"
        )

    def pieces(self, name: str, buffer: bytearray) -> Iterator[memoryview]:
        """Yields the stored bytes of tensor ``name`` in order, ``len(buffer)`` at a time.

        Each piece is a view of ``buffer``, overwritten by the next one. The CRC32C of the
        whole is checked before the last piece is yielded, so a consumer that reaches the
        end has read good bytes (for a string tensor, its lengths are checked first).

        Raises:
          CheckpointError: if the data file is missing or truncated, or a CRC differs.
        """
        entry = self.entries[name]
        shard = self._open(entry)
        view = memoryview(buffer)
        crc, checked_from = 0, 0
        if entry.dtype == DT_STRING:
            crc, checked_from = self._string_header(entry, shard)
        for start in range(0, entry.size, len(buffer)):
            piece = view[: min(len(buffer), entry.size - start)]
            if read_fully(shard, piece, entry.offset + start) != len(piece):
                raise self._truncated(entry, shard)
            crc = crc32c(piece[max(checked_from - start, 0) :], crc)
            if start + len(piece) == entry.size and mask_crc(crc) != entry.crc:
                raise CheckpointError(f"checkpoint {self.prefix} is corrupt: checksum mismatch for {name}")
            yield piece
        if entry.size == 0 and mask_crc(crc) != entry.crc:
            raise CheckpointError(f"checkpoint {self.prefix} is corrupt: checksum mismatch for {name}")

    def raw(self, name: str) -> bytes:
        """Returns the stored bytes of tensor ``name``, checked as by :meth:`pieces`."""
        entry = self.entries[name]
        self._open(entry)
        buffer = bytearray(entry.size)
        for _ in self.pieces(name, buffer):
            pass
        return bytes(buffer)

    def array(self, name: str) -> np.ndarray:
        """Returns tensor ``name`` as a numpy array (bfloat16 as uint16 bits)."""
        entry = self.entries[name]
        dtype = NUMPY_DTYPES.get(entry.dtype)
        if dtype is None:
            raise CheckpointError(f"tensor {name} has {entry.dtype_name}, not a numeric type")
        return np.frombuffer(self.raw(name), dtype=dtype).reshape(entry.shape)

    def close(self) -> None:
        """Closes the data files."""
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Converts bfloat16 values, given as uint16 bits, to float32 exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float64_to_bfloat16(values: np.ndarray) -> np.ndarray:
    r"""Rounds float64 values to bfloat16 once, to nearest with ties to even; as uint16 bits.

    Each value x is first rounded to float32 *to odd*: toward zero, then with the last bit set
    if that was inexact. float32 has 16 more significand bits than bfloat16 (also among
    subnormals), so rounding that float32 to nearest even bfloat16 gives the bfloat16 nearest
    to x itself: the odd bit stands for whatever was cut off and breaks false ties (Boldo and
    Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms using rounding
    to odd", IEEE Trans. Computers 2008). Values at or past the largest bfloat16 plus half a
    step become infinities; a NaN stays a NaN (of the same sign).
    """
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        single = values.astype(np.float32)
        magnitude, back = np.abs(values), np.abs(single.astype(np.float64))
    bits = single.view(np.uint32).copy()
    bits -= (back > magnitude).astype(np.uint32)  # toward zero (sign and magnitude)
    bits |= (back != magnitude).astype(np.uint32)  # inexact: odd
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    rounded[nan] = np.where(np.signbit(values[nan]), np.uint16(0xFFC0), np.uint16(0x7FC0))
    return rounded


def encode_string_scalar(value: bytes) -> tuple[bytes, int]:
    """Encodes a scalar string tensor as TensorFlow stores it; returns (bytes, masked CRC)."""
    length = len(value)
    # The CRC covers the length as a uint32 (uint64 past 4 GiB), not its varint bytes.
    crc = crc32c(struct.pack("<I" if length <= 0xFFFFFFFF else "<Q", length))
    length_crc = mask_crc(crc)
    packed_crc = struct.pack("<I", length_crc)
    crc = crc32c(value, crc32c(packed_crc, crc))
    return pw.encode_varint(length) + packed_crc + value, mask_crc(crc)


def decode_string_scalar(data: bytes | memoryview) -> bytes:
    """Decodes a scalar string tensor from its stored bytes."""
    length, position = pw.read_varint(data, 0)
    position += 4
    return bytes(data[position : position + length])


class CheckpointWriter:
    """Writes a single-shard checkpoint. Each tensor first gets its place in the data file
    (:meth:`place`, in name order, so the file is laid out as TensorFlow lays it out), then
    its bytes (:meth:`write`): from any thread and in any order on a local disk, in place
    order where :attr:`in_order` (a remote file system); :meth:`finish` writes the index once
    every placed tensor is written."""

    def __init__(self, prefix: str, header: list):
        self.prefix = prefix
        self._header = [f for f in header if f[0] != 1] + [(1, pw.VARINT, 1)]
        self._data = storage.Writer(prefix + ".data-00000-of-00001")
        self.in_order = self._data.in_order
        self._size = 0
        self._places: dict[str, tuple[Entry, int, int]] = {}
        self._written: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def place(self, entry: Entry, size: int) -> None:
        """Reserves ``size`` bytes for tensor ``entry.name`` after those placed before."""
        self._places[entry.name] = (entry, self._size, size)
        self._size += size

    def write(self, name: str, pieces: Iterable[bytes | memoryview], crc: int | None = None) -> None:
        """Writes the bytes of placed tensor ``name``, given in ``pieces`` (masked ``crc`` if known)."""
        entry, offset, size = self._places[name]
        position, computed = offset, 0
        for piece in pieces:
            view = memoryview(piece).cast("B")
            if position + len(view) > offset + size:
                raise ValueError(f"{name}: more than the {size} bytes placed")
            if crc is None:
                computed = crc32c(view, computed)
            self._data.write_at(view, position)
            position += len(view)
        if position != offset + size:
            raise ValueError(f"{name}: {position - offset} bytes written, {size} placed")
        if crc is None:
            crc = mask_crc(computed)
        replaced = {3: (3, pw.VARINT, 0), 4: (4, pw.VARINT, offset),
                    5: (5, pw.VARINT, size), 6: (6, pw.FIXED32, crc)}
        message = [f for f in pw.fields(entry.proto) if f[0] not in replaced]
        message += [replaced[number] for number in sorted(replaced)]
        message.sort(key=lambda f: f[0])
        with self._lock:
            self._written[name] = pw.encode(message)

    def finish(self) -> None:
        """Writes the index and closes the files."""
        missing = sorted(set(self._places) - set(self._written))
        if missing:
            raise ValueError(f"{len(missing)} tensors placed but not written, e.g. {missing[0]}")
        self._data.close()
        entries = [(b"", pw.encode(self._header))]
        entries += sorted((name.encode("utf-8"), proto) for name, proto in self._written.items())
        index = io.BytesIO()
        data_handle = _write_block(index, 0, entries)
        last_key = entries[-1][0]
        end = data_handle[0] + data_handle[1] + _BLOCK_TRAILER_SIZE
        meta_handle = _write_block(index, end, [])
        end = meta_handle[0] + meta_handle[1] + _BLOCK_TRAILER_SIZE
        index_handle = _write_block(index, end, [(last_key, _encode_handle(*data_handle))])
        footer = _encode_handle(*meta_handle) + _encode_handle(*index_handle)
        index.write(footer.ljust(_FOOTER_SIZE - 8, b"\0") + struct.pack("<Q", _TABLE_MAGIC))
        storage.write(self.prefix + ".index", index.getvalue())

    def close(self) -> None:
        """Closes the data file (after :meth:`finish`, or to give up)."""
        self._data.close()


def _encode_handle(offset: int, size: int) -> bytes:
    return pw.encode_varint(offset) + pw.encode_varint(size)


def _write_block(out: BinaryIO, offset: int, entries: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """Writes a table block (every entry a restart point); returns its handle."""
    block, restarts = bytearray(), []
    for key, value in entries:
        restarts.append(len(block))
        block += pw.encode_varint(0) + pw.encode_varint(len(key)) + pw.encode_varint(len(value))
        block += key + value
    restarts = restarts or [0]
    block += struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))
    trailer = bytes([_NO_COMPRESSION])
    out.write(block + trailer + struct.pack("<I", mask_crc(crc32c(bytes(block) + trailer))))
    return offset, len(block)
