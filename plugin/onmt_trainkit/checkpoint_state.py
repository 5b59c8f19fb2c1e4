"""The ``checkpoint`` file of a model directory, read and written without TensorFlow.

TensorFlow writes a ``CheckpointState`` message there in protocol-buffer text format::

    model_checkpoint_path: "ckpt-5000"
    all_model_checkpoint_paths: "ckpt-4000"
    all_model_checkpoint_paths: "ckpt-5000"
    all_model_checkpoint_timestamps: 1700000000.5
    last_preserved_timestamp: 1690000000.25

Paths are C-escaped strings, relative to the directory unless absolute. Anything else in the
file (an unknown field, a line that does not parse, bytes that are not UTF-8, a path with a null
byte) makes it invalid, as TensorFlow's parser would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MODEL_CHECKPOINT_PATH = "model_checkpoint_path"
ALL_MODEL_CHECKPOINT_PATHS = "all_model_checkpoint_paths"
ALL_MODEL_CHECKPOINT_TIMESTAMPS = "all_model_checkpoint_timestamps"
LAST_PRESERVED_TIMESTAMP = "last_preserved_timestamp"
_NUMBER_FIELDS = (ALL_MODEL_CHECKPOINT_TIMESTAMPS, LAST_PRESERVED_TIMESTAMP)

_LINE = re.compile(r"^\s*(?P<key>[A-Za-z_]+)\s*:\s*(?P<value>.*?)\s*$")
_STRING = re.compile(r"""^(?:"(?P<double>(?:[^"\\]|\\.)*)"|'(?P<single>(?:[^'\\]|\\.)*)')$""")
_NUMBER = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?(?:inf|nan)$", re.I)
_SIMPLE_ESCAPES = {"n": 10, "t": 9, "r": 13, "a": 7, "b": 8, "f": 12, "v": 11,
                   "\\": 92, "'": 39, '"': 34, "?": 63}


class StateError(ValueError):
    """A ``checkpoint`` file that cannot be read; the message says why (not which file)."""


@dataclass
class CheckpointState:
    """What a ``checkpoint`` file holds: the paths it lists, as written there (relative or
    absolute), and the save times by which TensorFlow's ``CheckpointManager`` keeps them."""

    model_checkpoint_path: str = ""
    all_model_checkpoint_paths: list[str] = field(default_factory=list)
    all_model_checkpoint_timestamps: list[float] = field(default_factory=list)
    last_preserved_timestamp: float | None = None


def _unescape(body: str, line: int) -> str:
    out = bytearray()
    position = 0
    while position < len(body):
        char = body[position]
        if char != "\\":
            out += char.encode("utf-8")
            position += 1
            continue
        following = body[position + 1 : position + 2]
        if following in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[following])
            position += 2
        elif re.match(r"[0-7]", following):
            digits = re.match(r"[0-7]{1,3}", body[position + 1 :]).group()
            if int(digits, 8) > 255:
                raise StateError(f"line {line}: octal escape \\{digits} is not a byte")
            out.append(int(digits, 8))
            position += 1 + len(digits)
        elif following in ("x", "X") and re.match(r"[0-9A-Fa-f]", body[position + 2 : position + 3]):
            digits = re.match(r"[0-9A-Fa-f]{1,2}", body[position + 2 :]).group()
            out.append(int(digits, 16))
            position += 2 + len(digits)
        else:
            raise StateError(f"line {line}: unknown escape \\{following}")
    try:
        text = out.decode("utf-8")
    except UnicodeDecodeError:
        raise StateError(f"line {line}: a path that is not UTF-8") from None
    if "\0" in text:
        raise StateError(f"line {line}: a path with a null byte")
    return text


def parse(data: bytes) -> CheckpointState:
    """Parses the content of a ``checkpoint`` file.

    Raises:
      StateError: if it is not a valid ``CheckpointState`` or lists no checkpoint.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise StateError("it is not UTF-8 text") from None
    state = CheckpointState()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise StateError(f"line {number} is not 'field: value'")
        key, value = match.group("key"), match.group("value")
        if key in (MODEL_CHECKPOINT_PATH, ALL_MODEL_CHECKPOINT_PATHS):
            string = _STRING.match(value)
            if string is None:
                raise StateError(f"line {number}: {key} is not a quoted string")
            body = string.group("double")
            path = _unescape(string.group("single") if body is None else body, number)
            if key == MODEL_CHECKPOINT_PATH:
                state.model_checkpoint_path = path
            else:
                state.all_model_checkpoint_paths.append(path)
        elif key in _NUMBER_FIELDS:
            if _NUMBER.match(value) is None:
                raise StateError(f"line {number}: {key} is not a number")
            if key == LAST_PRESERVED_TIMESTAMP:
                state.last_preserved_timestamp = float(value)
            else:
                state.all_model_checkpoint_timestamps.append(float(value))
        else:
            raise StateError(f"line {number}: unknown field {key!r}")
    if not state.model_checkpoint_path and not state.all_model_checkpoint_paths:
        raise StateError("it lists no checkpoint")
    if "" in state.all_model_checkpoint_paths:
        raise StateError("it lists an empty path")
    return state


def _escape(path: str) -> str:
    out = []
    for byte in path.encode("utf-8"):
        if byte in (34, 39, 92):
            out.append("\\" + chr(byte))
        elif 32 <= byte < 127:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    return "".join(out)


def format_state(
    latest: str,
    paths: list[str],
    timestamps: list[float] | None = None,
    last_preserved_timestamp: float | None = None,
) -> str:
    """Returns the text of a ``checkpoint`` file listing ``paths`` (oldest first), ``latest`` last.

    Args:
      latest: The newest checkpoint, listed last.
      paths: The checkpoints listed before it, oldest first (``latest`` is left out of them
        when given among them).
      timestamps: If given, the save times of the checkpoints in the order they are listed
        (``paths`` without ``latest``, then ``latest``).
      last_preserved_timestamp: If given, checkpoints saved before it are kept for good.

    Raises:
      ValueError: if ``timestamps`` and the listed checkpoints differ in number.
    """
    listed = [p for p in paths if p != latest] + [latest]
    if timestamps is not None and len(timestamps) != len(listed):
        raise ValueError(f"{len(listed)} checkpoints listed, {len(timestamps)} timestamps")
    lines = [f'{MODEL_CHECKPOINT_PATH}: "{_escape(latest)}"']
    lines += [f'{ALL_MODEL_CHECKPOINT_PATHS}: "{_escape(p)}"' for p in listed]
    lines += [f"{ALL_MODEL_CHECKPOINT_TIMESTAMPS}: {float(time)!r}" for time in timestamps or []]
    if last_preserved_timestamp is not None:
        lines.append(f"{LAST_PRESERVED_TIMESTAMP}: {float(last_preserved_timestamp)!r}")
    return "\n".join(lines) + "\n"
