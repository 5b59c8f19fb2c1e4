"""The protocol-buffer wire format, for the few messages the checkpoint tools read and write.

Messages are handled as lists of ``(field number, wire type, value)``: an ``int`` for
varint and fixed-width fields, ``bytes`` for length-delimited ones. Unknown fields are
kept, so a message re-encoded after editing keeps everything it did not touch.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

VARINT, FIXED64, BYTES, FIXED32 = 0, 1, 2, 5

Field = tuple[int, int, "int | bytes"]


class DecodeError(ValueError):
    """Bytes that are not a valid protocol-buffer message."""


def read_varint(data: bytes | memoryview, position: int) -> tuple[int, int]:
    """Returns (value, position after it) for the varint at ``position``."""
    if position < len(data) and data[position] < 0x80:
        return data[position], position + 1
    result = shift = 0
    while True:
        if position >= len(data):
            raise DecodeError("truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise DecodeError("varint too long")


def encode_varint(value: int) -> bytes:
    """Encodes a non-negative integer (or a negative int64, as protobuf does) as a varint."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def fields(data: bytes | memoryview) -> Iterator[Field]:
    """Yields the fields of a serialized message, in order."""
    position, end = 0, len(data)
    while position < end:
        key, position = read_varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == VARINT:
            value, position = read_varint(data, position)
        elif wire_type == FIXED64:
            value = int.from_bytes(data[position : position + 8], "little")
            position += 8
        elif wire_type == FIXED32:
            value = int.from_bytes(data[position : position + 4], "little")
            position += 4
        elif wire_type == BYTES:
            size, position = read_varint(data, position)
            value = bytes(data[position : position + size])
            position += size
        else:
            raise DecodeError(f"unsupported wire type {wire_type}")
        if position > end:
            raise DecodeError("truncated message")
        yield number, wire_type, value


def encode(message: list[Field]) -> bytes:
    """Serializes a list of fields."""
    out = bytearray()
    for number, wire_type, value in message:
        out += encode_varint(number << 3 | wire_type)
        if wire_type == VARINT:
            out += encode_varint(value)
        elif wire_type == FIXED64:
            out += value.to_bytes(8, "little")
        elif wire_type == FIXED32:
            out += value.to_bytes(4, "little")
        else:
            out += encode_varint(len(value)) + value
    return bytes(out)


def first(message: list[Field], number: int, default: int | bytes | None = None) -> int | bytes | None:
    """Returns the value of the first field ``number``, or ``default``."""
    for field_number, _, value in message:
        if field_number == number:
            return value
    return default


def as_float32(value: int) -> float:
    """Interprets a fixed32 field as a float."""
    return struct.unpack("<f", value.to_bytes(4, "little"))[0]


def as_float64(value: int) -> float:
    """Interprets a fixed64 field as a double."""
    return struct.unpack("<d", value.to_bytes(8, "little"))[0]
