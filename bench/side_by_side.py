#!/usr/bin/env python
"""Two training runs one after the other (each with all cores) against side by side (each
with its share of the cores), as ``tools/experiment.py --jobs 1`` and ``--jobs 2`` run them.

Trains the experiment's small Transformer (``configs/models/small_transformer.py``) with
``onmt-main`` on a toy corpus with a joint vocabulary of 8,000 words, like the experiment's,
twice each way, and prints the wall time of each way
and their ratio: what ``--jobs 2`` saves on this machine, start-up and tracing included.

    python bench/side_by_side.py [--steps 300] [--work_dir run/bench_side_by_side]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import sys
import time

from common import ONMT_MAIN, ROOT, measure, write_config

import toy_corpus  # on the path through common

MODEL = os.path.join(ROOT, "configs", "models", "small_transformer.py")


def train(config: str, model_dir: str, threads: int | None) -> None:
    shutil.rmtree(model_dir, ignore_errors=True)
    flags = [] if threads is None else ["--intra_op_parallelism_threads", str(threads),
                                        "--inter_op_parallelism_threads", str(threads)]
    measure([ONMT_MAIN, "--model", MODEL, "--config", config, *flags, "train"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "run", "bench_side_by_side"))
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    paths = toy_corpus.write_corpus(os.path.join(args.work_dir, "data"), num_train=20000, num_test=1,
                                    vocab_size=4000, min_length=5, max_length=25)
    joint = os.path.join(args.work_dir, "data", "joint.vocab")
    with open(paths["src_vocab"], encoding="utf-8") as source, open(paths["tgt_vocab"], encoding="utf-8") as target:
        words = source.read().splitlines() + target.read().splitlines()[len(toy_corpus.SPECIAL_TOKENS):]
    with open(joint, "w", encoding="utf-8") as output:
        output.write("\n".join(words) + "\n")
    paths["src_vocab"] = paths["tgt_vocab"] = joint  # the model shares its embeddings
    configs = [write_config(os.path.join(args.work_dir, f"run{i}.yml"), os.path.join(args.work_dir, f"run{i}"),
                            paths, batch_size=2048, max_step=args.steps, save_checkpoints_steps=args.steps,
                            save_summary_steps=args.steps) for i in (1, 2)]
    model_dirs = [os.path.join(args.work_dir, f"run{i}") for i in (1, 2)]
    share = max(1, (os.cpu_count() or 1) // 2)

    start = time.perf_counter()
    for config, model_dir in zip(configs, model_dirs):
        train(config, model_dir, None)
    one_after_the_other = time.perf_counter() - start

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(train, configs, model_dirs, [share, share]))
    side_by_side = time.perf_counter() - start

    print(f"\ntwo runs of {args.steps} updates (small Transformer, batches of 2,048 tokens, "
          f"{os.cpu_count()} cores)")
    print(f"one after the other, all cores each: {one_after_the_other:7.1f} s")
    print(f"side by side, {share} core(s) each:     {side_by_side:7.1f} s")
    print(f"ratio: {one_after_the_other / side_by_side:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
