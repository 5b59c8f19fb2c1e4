#!/usr/bin/env python
"""The cost of the moving average of the weights: the plugin's against OpenNMT-tf's own.

Trains Transformer base (about 44M parameters with the toy vocabulary) on CPU with real
``onmt-main`` runs, with and without ``train.moving_average_decay``, for stock OpenNMT-tf and
for the plugin, interleaved round by round, and reads the steps/s that OpenNMT-tf logs after
its first report (from the times of its log lines). The update costs about 1% of a step,
less than the run-to-run noise of whole runs, so it also times, in process and interleaved,
one update of each class (compiled, as in training) and one swap in and out, and the plugin's
update for K = 1, 2 and 3 decays (``train.moving_average_decay: [d1, ..., dK]``).

    python bench/moving_average.py [--rounds 2] [--batch_size 2048] [--steps 16]
    python bench/moving_average.py --decays_only     # the K = 1, 2, 3 table alone
"""

from __future__ import annotations

import argparse
import datetime
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
REPORT = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+): .* Step = (\d+) ;", re.M)


def seconds_per_step(work_dir, paths, model_key, decay, batch_size, steps, report) -> float:
    model_dir = os.path.join(work_dir, "model")
    shutil.rmtree(model_dir, ignore_errors=True)
    train = dict(batch_size=batch_size, max_step=steps, save_checkpoints_steps=10**6,
                 save_summary_steps=report)
    if decay is not None:
        train["moving_average_decay"] = decay
    config = write_config(os.path.join(work_dir, "train.yml"), model_dir, paths, **train)
    _, _, log = measure([ONMT_MAIN, "--model", paths[model_key], "--config", config, "--seed", "1", "train"],
                        stock=model_key == "stock_model")
    times = {int(step): datetime.datetime.fromisoformat(stamp) for stamp, step in REPORT.findall(log)}
    return (times[steps] - times[report]).total_seconds() / (steps - report)


def in_process_costs(paths) -> dict[str, dict[str, float]]:
    """Median seconds of one update and of one swap in and out, for both classes, on the
    variables of Transformer base; each update runs compiled, as in training."""
    import opennmt
    import tensorflow as tf

    from onmt_trainkit.moving_average import MovingAverage

    model = opennmt.models.TransformerBase()
    model.initialize({"source_vocabulary": paths["src_vocab"], "target_vocabulary": paths["tgt_vocab"]})
    model.create_variables()
    step = tf.Variable(1, dtype=tf.int64)
    plugin = MovingAverage(model.trainable_variables, step, decay=0.9999)
    stock = opennmt.training.MovingAverage(model.trainable_variables, step, decay=0.9999)
    updates = {"plugin": tf.function(plugin.update), "stock": stock.update}
    averages = {"plugin": plugin, "stock": stock}
    results: dict[str, dict[str, float]] = {"update": {}, "swap": {}}
    for _ in range(2):  # interleaved
        for name in ("stock", "plugin"):
            updates[name]()
            step.assign_add(1)
            timings = []
            for _ in range(15):
                start = time.perf_counter()
                updates[name]()
                timings.append(time.perf_counter() - start)
            results["update"][name] = statistics.median(timings)
            timings = []
            for _ in range(5):
                start = time.perf_counter()
                with averages[name].shadow_variables():
                    pass
                timings.append(time.perf_counter() - start)
            results["swap"][name] = statistics.median(timings)
    return results


def update_costs_by_decay_count(paths, counts=(1, 2, 3), calls=60) -> tuple[dict[str, dict[int, list[float]]], int]:
    """Wall and processor seconds of each compiled update of the plugin's averages of
    Transformer base's variables, for each number K of decays, the K values taking turns call
    by call; and the bytes of the averaged weights."""
    import opennmt
    import tensorflow as tf

    from onmt_trainkit.moving_average import MovingAverage

    model = opennmt.models.TransformerBase()
    model.initialize({"source_vocabulary": paths["src_vocab"], "target_vocabulary": paths["tgt_vocab"]})
    model.create_variables()
    step = tf.Variable(1, dtype=tf.int64)
    decays = (0.9999, 0.999, 0.99)
    updates = {count: tf.function(MovingAverage(model.trainable_variables, step, decay=decays[:count]).update)
               for count in counts}
    for update in updates.values():  # compile, and the first update (a copy)
        update()
    step.assign(2)
    timings: dict[str, dict[int, list[float]]] = {"wall": {c: [] for c in counts}, "cpu": {c: [] for c in counts}}
    for _ in range(calls):
        for count in counts:
            wall, cpu = time.perf_counter(), time.process_time()
            updates[count]()
            timings["wall"][count].append(time.perf_counter() - wall)
            timings["cpu"][count].append(time.process_time() - cpu)
    size = sum(v.shape.num_elements() * v.dtype.size for v in model.trainable_variables)
    return timings, size


def print_decay_counts(paths) -> None:
    timings, size = update_costs_by_decay_count(paths)
    rows = {
        "wall, best": {c: min(v) for c, v in timings["wall"].items()},
        "wall, median": {c: statistics.median(v) for c, v in timings["wall"].items()},
        "processor, median": {c: statistics.median(v) for c, v in timings["cpu"].items()},
    }
    print(f"\nThe plugin's update of Transformer base ({size / 2**20:.0f} MiB of weights) for K decays, "
          f"compiled, {len(timings['wall'][1])} calls each, K values taking turns (ms, and / K=1):")
    print(f"{'':<19}" + "".join(f"{f'K={c}':>18}" for c in timings["wall"]))
    for label, values in rows.items():
        print(f"{label:<19}" + "".join(f"{values[c] * 1000:>10.1f} ({values[c] / values[1]:.2f})" for c in values))
    print("bound: K decays cost at most K times one decay (processor time is the least disturbed by other load)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "run", "bench_moving_average"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=2048, help="Tokens per batch.")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--report", type=int, default=4)
    parser.add_argument("--decays_only", action="store_true",
                        help="Only time the plugin's update for K = 1, 2, 3 decays.")
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    paths = prepare(args.work_dir)
    if args.decays_only:
        print_decay_counts(paths)
        return 0
    timings: dict[str, list[float]] = {name: [] for name, _, _ in VARIANTS}
    for round_index in range(args.rounds):
        for name, model_key, decay in VARIANTS:
            seconds = seconds_per_step(args.work_dir, paths, model_key, decay, args.batch_size,
                                       args.steps, args.report)
            timings[name].append(seconds)
            print(f"round {round_index + 1}: {name:<13} {seconds:.3f} s/step", flush=True)
    median = {name: statistics.median(values) for name, values in timings.items()}
    costs = in_process_costs(paths)
    print(f"\nTransformer base on CPU, batches of {args.batch_size} tokens, median of {args.rounds} "
          f"interleaved rounds (steps {args.report}-{args.steps} of each run):")
    print(f"{'':<14}{'s/step':>8}{'with EMA':>10}{'slowdown':>10}{'one update':>12}{'update/step':>13}"
          f"{'swap in+out':>13}")
    slowdowns = {}
    for label, name, base in (("OpenNMT-tf", "stock", "stock"), ("onmt-trainkit", "plugin", "plugin")):
        slowdowns[name] = median[f"{base} + EMA"] / median[base] - 1
        update = costs["update"][name]
        print(f"{label:<14}{median[base]:>8.3f}{median[base + ' + EMA']:>10.3f}{slowdowns[name]:>10.1%}"
              f"{update * 1000:>9.1f} ms{update / median[base]:>12.2%}{costs['swap'][name] * 1000:>10.0f} ms")
    ratio = costs["update"]["plugin"] / costs["update"]["stock"]
    print(f"update cost, plugin / OpenNMT-tf: {ratio:.2f} (measured in process; the slowdowns of "
          "whole runs are within their run-to-run noise)")
    print_decay_counts(paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
