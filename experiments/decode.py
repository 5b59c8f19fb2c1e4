"""Decodes several checkpoints of one model in one process, as ``onmt-main infer`` decodes
each: the same model, configuration (``params``, ``infer``) and batches, with the inference
function traced once for all of them (``onmt-main infer`` traces it again in every process,
which takes longer than decoding a few thousand short sequences).

Usage::

    python experiments/decode.py --config RUN.yml [MORE.yml ...] --model_dir DIR --jobs JOBS.json

``JOBS.json`` lists ``[checkpoint prefix, features file, predictions file]`` triples. Each
predictions file is written aside, then renamed: it is complete or absent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

INFER_DEFAULTS = {"batch_size": 16, "batch_type": "examples", "length_bucket_width": None}
"""OpenNMT-tf 2.32.0's defaults of the ``infer`` keys that make the batches."""


def in_input_order(batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The predictions of ``batches`` one example each, in the order of the input lines (their
    ``index``, which length-bucketed batches carry; the batches' order without it)."""
    examples = [{key: value[i] for key, value in batch.items()}
                for batch in batches for i in range(len(next(iter(batch.values()))))]
    if examples and "index" in examples[0]:
        examples.sort(key=lambda example: int(example["index"]))
    return examples


def decode(config_paths: list[str], model_dir: str, jobs: list[tuple[str, str, str]], intra_op_threads: int = 0,
           inter_op_threads: int = 0) -> None:
    """Decodes checkpoints of one model, each into its predictions file.

    Args:
      config_paths: Configuration files, merged in order, as ``onmt-main --config`` takes them
        (``data``, ``params`` and ``infer`` are read; ``auto_config`` is refused).
      model_dir: The run's model directory: its ``model_description.py``, which
        ``onmt-main train`` writes, gives the model.
      jobs: (checkpoint prefix, features file, predictions file) triples, decoded in order.
      intra_op_threads: Threads of TensorFlow's intra-op pool (0: its default).
      inter_op_threads: Threads of its inter-op pool (0: its default).

    Raises:
      ValueError: when the configuration asks for ``auto_config``.
      AssertionError: when a checkpoint lacks a weight of the model.
    """
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    import opennmt

    config = opennmt.config.load_config(config_paths)
    if config.get("auto_config"):
        raise ValueError("auto_config: True is not applied here (the model's automatic parameters would be "
                         "missing); write the parameters in the configuration")
    infer = {**INFER_DEFAULTS, **config.get("infer", {})}
    params = {"num_hypotheses": infer.get("n_best", 1), **config.get("params", {})}
    model = opennmt.config.load_model(model_dir, serialize_model=False)
    model.initialize(config["data"], params=params)
    model.create_variables()
    checkpoint = tf.train.Checkpoint(model=model)
    function = None
    for prefix, features, predictions in jobs:
        status = checkpoint.read(prefix)
        status.expect_partial()  # the optimizer and the moving average's state are not read
        status.assert_existing_objects_matched()  # but every weight of the model is
        dataset = model.examples_inputter.make_inference_dataset(
            features, infer["batch_size"], batch_type=infer["batch_type"],
            length_bucket_width=infer["length_bucket_width"], prefetch_buffer_size=infer.get("prefetch_buffer_size"))
        if function is None:
            function = tf.function(model.infer, input_signature=(dataset.element_spec,))
        batches = [tf.nest.map_structure(lambda t: t.numpy(), function(batch)) for batch in dataset]
        examples = in_input_order(batches)
        aside = f"{predictions}.decoding-{os.getpid()}"
        with open(aside, "w", encoding="utf-8") as stream:
            for example in examples:
                model.print_prediction(example, params=infer, stream=stream)
        os.replace(aside, predictions)
        print(f"decoded {len(examples)} lines of {features} with {prefix} into {predictions}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="decode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", required=True, help="configuration files, merged in order")
    parser.add_argument("--model_dir", required=True, help="the run's model directory (its model_description.py)")
    parser.add_argument("--jobs", required=True, help="JSON file: [[checkpoint, features, predictions], ...]")
    for pool in ("intra_op", "inter_op"):  # as onmt-main takes them
        parser.add_argument(f"--{pool}_parallelism_threads", type=int, default=0,
                            help="threads of TensorFlow's pool (0: its default)")
    args = parser.parse_args(argv)
    with open(args.jobs, encoding="utf-8") as listed:
        jobs = [tuple(job) for job in json.load(listed)]
    decode(args.config, args.model_dir, jobs, args.intra_op_parallelism_threads, args.inter_op_parallelism_threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
