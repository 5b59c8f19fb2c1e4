#!/usr/bin/env python
"""The cost of the moving average of the weights: the plugin's against OpenNMT-tf's own.

Trains Transformer base (about 44M parameters with the toy vocabulary) on CPU with real
``onmt-main`` runs, with and without ``train.moving_average_decay``, for stock OpenNMT-tf and
for the plugin, interleaved round by round, and reads the steps/s that OpenNMT-tf logs after
its warmup steps. Then times one swap in and out of the average, in process.

    python bench/moving_average.py [--rounds 2] [--batch_size 2048]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import time

from common import ONMT_MAIN, ROOT, measure, prepare, write_config

VARIANTS = [  # (name, model file key, moving_average_decay)
    ("stock", "stock_model", None),
    ("stock + EMA", "stock_model", 0.9999),
    ("plugin", "plugin_model", None),
    ("plugin + EMA", "plugin_model", 0.9999),
]
REPORT = re.compile(r"Step = (\d+) ; steps/s = ([0-9.]+)")


def seconds_per_step(work_dir, paths, model_key, decay, batch_size, steps, report) -> float:
    model_dir = os.path.join(work_dir, "model")
    shutil.rmtree(model_dir, ignore_errors=True)
    train = dict(batch_size=batch_size, max_step=steps, save_checkpoints_steps=10**6,
                 save_summary_steps=report)
    if decay is not None:
        train["moving_average_decay"] = decay
    config = write_config(os.path.join(work_dir, "train.yml"), model_dir, paths, **train)
    _, _, log = measure([ONMT_MAIN, "--model", paths[model_key], "--config", config, "--seed", "1", "train"])
    rates = [float(rate) for step, rate in REPORT.findall(log) if int(step) > report]
    return 1.0 / statistics.mean(rates)


def swap_seconds(paths) -> dict[str, float]:
    """Median time of one swap in and out, for the plugin's and OpenNMT-tf's classes."""
    import opennmt
    import tensorflow as tf

    from onmt_trainkit.moving_average import MovingAverage

    model = opennmt.models.TransformerBase()
    model.initialize({"source_vocabulary": paths["src_vocab"], "target_vocabulary": paths["tgt_vocab"]})
    model.create_variables()
    step = tf.Variable(1, dtype=tf.int64)
    averages = {"plugin": MovingAverage(model.trainable_variables, step, decay=0.9999),
                "stock": opennmt.training.MovingAverage(model.trainable_variables, step, decay=0.9999)}
    results = {}
    for name, average in averages.items():
        average.update()
        timings = []
        for _ in range(7):
            start = time.perf_counter()
            with average.shadow_variables():
                pass
            timings.append(time.perf_counter() - start)
        results[name] = statistics.median(timings)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "run", "bench_moving_average"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=2048, help="Tokens per batch.")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--report", type=int, default=4)
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    paths = prepare(args.work_dir)
    timings: dict[str, list[float]] = {name: [] for name, _, _ in VARIANTS}
    for round_index in range(args.rounds):
        for name, model_key, decay in VARIANTS:
            seconds = seconds_per_step(args.work_dir, paths, model_key, decay, args.batch_size,
                                       args.steps, args.report)
            timings[name].append(seconds)
            print(f"round {round_index + 1}: {name:<13} {seconds:.3f} s/step", flush=True)
    median = {name: statistics.median(values) for name, values in timings.items()}
    swaps = swap_seconds(paths)
    stock = median["stock + EMA"] / median["stock"] - 1
    plugin = median["plugin + EMA"] / median["plugin"] - 1
    print(f"\nTransformer base on CPU, batches of {args.batch_size} tokens, median of {args.rounds} "
          f"interleaved rounds (steps {args.report + 1}-{args.steps} of each run):")
    print(f"{'':<14}{'s/step':>8}{'EMA slowdown':>14}{'swap in+out':>13}")
    print(f"{'OpenNMT-tf':<14}{median['stock']:>8.3f}{stock:>13.1%} {swaps['stock'] * 1000:>9.0f} ms")
    print(f"{'onmt-trainkit':<14}{median['plugin']:>8.3f}{plugin:>13.1%} {swaps['plugin'] * 1000:>9.0f} ms")
    print(f"slowdown ratio, plugin / OpenNMT-tf: {plugin / stock:.2f}" if stock > 0 else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
