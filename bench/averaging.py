#!/usr/bin/env python
"""Checkpoint averaging: tools/average_checkpoints.py against onmt-main average_checkpoints.

Trains Transformer base (about 44M parameters with the toy vocabulary) for 8 steps with stock
``onmt-main``, saving a checkpoint at every step, then averages 8 and 2 of them with both
tools, side by side, and prints wall time, peak memory and the page-cache read floor (the
time to read the averaged tensors' bytes once and write one checkpoint, plus starting
Python). The plugin's bytecode is compiled first, as an installed package's is.

    python bench/averaging.py [--work_dir run/bench_averaging]
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import sys
import time

from common import ONMT_MAIN, ROOT, measure, prepare, write_config

import onmt_trainkit
from onmt_trainkit.averaging import is_averaged, listed_checkpoints
from onmt_trainkit.tensor_bundle import CheckpointReader

AVERAGE_TOOL = os.path.join(ROOT, "tools", "average_checkpoints.py")


def floor_ranges(checkpoints: list[str]) -> list[tuple[str, int, int]]:
    """The (data file, offset, size) of every averaged tensor of ``checkpoints``."""
    ranges = []
    for prefix in checkpoints:
        reader = CheckpointReader(prefix)
        for name, entry in reader.entries.items():
            if is_averaged(name, entry.dtype):
                ranges.append((reader.data_path(entry.shard_id), entry.offset, entry.size))
        reader.close()
    return ranges


def read_floor(ranges: list[tuple[str, int, int]], newest: str, work_dir: str) -> float:
    """Seconds to read ``ranges`` from the page cache and to write one checkpoint's worth of
    bytes (a copy of the ``newest`` checkpoint's data file)."""
    scratch = os.path.join(work_dir, "floor.tmp")
    start = time.perf_counter()
    for path, offset, size in ranges:
        with open(path, "rb", buffering=0) as data:
            data.seek(offset)
            data.read(size)
    with open(newest + ".data-00000-of-00001", "rb") as source, open(scratch, "wb") as output:
        shutil.copyfileobj(source, output, 16 << 20)
    elapsed = time.perf_counter() - start
    os.remove(scratch)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "run", "bench_averaging"))
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    paths = prepare(args.work_dir)
    model_dir = os.path.join(args.work_dir, "model")
    config = write_config(os.path.join(args.work_dir, "train.yml"), model_dir, paths, batch_size=256,
                          max_step=8, save_checkpoints_steps=1, keep_checkpoint_max=8,
                          save_summary_steps=100)
    if len(listed_checkpoints(model_dir) if os.path.isdir(model_dir) else []) < 8:
        shutil.rmtree(model_dir, ignore_errors=True)
        print("training Transformer base for 8 steps with stock onmt-main...", flush=True)
        measure([ONMT_MAIN, "--model", paths["stock_model"], "--config", config, "train"], stock=True)
    checkpoints = listed_checkpoints(model_dir)
    # Installed packages have their bytecode compiled; compiled here too, so that start-up is
    # measured as users see it even where PYTHONDONTWRITEBYTECODE keeps Python from caching it.
    compileall.compile_dir(os.path.dirname(onmt_trainkit.__file__), quiet=1)

    start = time.perf_counter()
    measure([sys.executable, "-c", "pass"])
    python_start = time.perf_counter() - start

    rows = []
    for count in (8, 2):
        ranges = floor_ranges(checkpoints[-count:])
        results: dict[str, tuple[float, int]] = {}
        floors = []
        # Interleaved, so that the machine's load weighs on all alike; the best of five for
        # the floor and the plugin, of three for onmt-main (10 s or more a run).
        for round_ in range(5):
            floors.append(read_floor(ranges, checkpoints[-1], args.work_dir))
            for name in ("plugin", "stock") if round_ < 3 else ("plugin",):
                output = os.path.join(args.work_dir, f"avg_{name}")
                shutil.rmtree(output, ignore_errors=True)
                if name == "plugin":
                    command = [sys.executable, AVERAGE_TOOL, "--model_dir", model_dir,
                               "--output_dir", output, "--max_count", str(count)]
                else:
                    command = [ONMT_MAIN, "--config", config, "average_checkpoints",
                               "--output_dir", output, "--max_count", str(count)]
                elapsed, peak, _ = measure(command, stock=name == "stock")
                best = results.get(name)
                results[name] = (min(elapsed, best[0]), max(peak, best[1])) if best else (elapsed, peak)
        rows.append((count, sum(size for _, _, size in ranges), min(floors), results))

    size_mb = os.path.getsize(checkpoints[-1] + ".data-00000-of-00001") / 1e6
    print(f"\nTransformer base, {len(checkpoints)} checkpoints of {size_mb:.0f} MB "
          f"(weights + Adam slots); Python starts in {python_start:.2f} s")
    print(f"{'N':>2} {'averaged':>9} {'floor':>10} {'plugin':>8} {'onmt-main':>9} {'speed-up':>8} "
          f"{'vs floor+start':>14} {'plugin RSS':>10} {'onmt-main RSS':>13}")
    for count, size, floor, results in rows:
        ours, stock = results["plugin"], results["stock"]
        print(f"{count:>2} {size / 1e9:>7.2f}GB {floor:>9.2f}s {ours[0]:>7.2f}s {stock[0]:>8.2f}s "
              f"{stock[0] / ours[0]:>7.1f}x {ours[0] / (floor + python_start):>13.2f}x "
              f"{ours[1] / 1e6:>8.0f}MB {stock[1] / 1e6:>11.0f}MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
