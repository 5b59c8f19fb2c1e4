"""Reading the scalars that OpenNMT-tf records, without TensorFlow.

OpenNMT-tf writes each evaluation as TensorBoard scalars ``metrics/<metric>`` in event files
under ``<model_dir>/eval``, and training scalars (``optim/learning_rate``, ``loss``...) in
event files in ``<model_dir>``. An event file is a sequence of TFRecords (length, masked
CRC32C of the length, an ``Event`` protocol buffer, masked CRC32C of the data).
"""

from __future__ import annotations

import glob
import os
import struct

import numpy as np

from onmt_trainkit import protowire as pw
from onmt_trainkit.tensor_bundle import crc32c, mask_crc

_DT_FLOAT, _DT_DOUBLE = 1, 2
_EVAL_PREFIX = "metrics/"
_LEARNING_RATE = "optim/learning_rate"


def _records(path: str):
    with open(path, "rb") as events:
        data = events.read()
    position = 0
    while position + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, position)
        (length_crc,) = struct.unpack_from("<I", data, position + 8)
        if mask_crc(crc32c(data[position : position + 8])) != length_crc:
            return  # A torn write at the end of a file being written.
        start = position + 12
        end = start + length
        if end + 4 > len(data):
            return
        (data_crc,) = struct.unpack_from("<I", data, end)
        if mask_crc(crc32c(data[start:end])) != data_crc:
            return
        yield data[start:end]
        position = end + 4


def _scalar(value: list) -> float | None:
    simple = pw.first(value, 2)
    if simple is not None:
        return pw.as_float32(simple)
    tensor = pw.first(value, 8)
    if tensor is None:
        return None
    tensor = list(pw.fields(tensor))
    dtype = pw.first(tensor, 1, _DT_FLOAT)
    content = pw.first(tensor, 4)
    if content:
        return float(np.frombuffer(content, "<f4" if dtype == _DT_FLOAT else "<f8")[0])
    for number, wire_type, raw in tensor:
        if number in (5, 6):
            if wire_type == pw.BYTES:
                return float(np.frombuffer(raw, "<f4" if number == 5 else "<f8")[0])
            return pw.as_float32(raw) if number == 5 else pw.as_float64(raw)
    return None


def read_scalars(directory: str, prefix: str = "") -> dict[int, dict[str, float]]:
    """Returns ``{step: {tag: value}}`` for the scalars of ``directory``'s event files whose
    tag starts with ``prefix`` (removed from the tags). A step written twice keeps the value
    written last."""
    results: dict[int, dict[str, float]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        for record in _records(path):
            event = list(pw.fields(record))
            summary = pw.first(event, 5)
            if summary is None:
                continue
            step = int(pw.first(event, 2, 0))
            for number, _, raw in pw.fields(summary):
                if number != 1:
                    continue
                value = list(pw.fields(raw))
                tag = pw.first(value, 1, b"").decode("utf-8")
                scalar = _scalar(value)
                if tag.startswith(prefix) and scalar is not None:
                    results.setdefault(step, {})[tag[len(prefix):]] = scalar
    return results


def wall_time_spans(directory: str) -> list[tuple[float, float]]:
    """Returns, for each event file of ``directory`` in name order, the wall times (seconds
    since the epoch) of its first and last events: a training process writes one file, so a
    run resumed twice has three spans."""
    spans = []
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        times = [pw.as_float64(raw) for record in _records(path)
                 for number, wire_type, raw in pw.fields(record) if number == 1 and wire_type == pw.FIXED64]
        if times:
            spans.append((min(times), max(times)))
    return spans


def read_eval_metrics(model_dir: str) -> dict[int, dict[str, float]]:
    """Returns ``{step: {metric: value}}`` for every evaluation recorded in ``model_dir``."""
    return read_scalars(os.path.join(model_dir, "eval"), _EVAL_PREFIX)


def read_learning_rates(model_dir: str) -> dict[int, float]:
    """Returns ``{step: learning rate}`` as ``onmt-main train`` logged it, every
    ``train.save_summary_steps``."""
    logged = read_scalars(model_dir, _LEARNING_RATE)
    return {step: values[""] for step, values in logged.items()}
