"""OpenNMT-tf's Horovod trainer keeps its rank-0 behaviour with the plugin's moving average.

Horovod is not installed here: a single-process stand-in for ``horovod.tensorflow`` plays
rank 0 or rank 1 of a one-process job (TensorFlow and OpenNMT-tf are real).
"""

from __future__ import annotations

import os
import sys

from conftest import data_config, run, write_yaml
from test_end_to_end import VALUE, all_tensors

HOROVOD = """
import sys
import tensorflow as tf
import onmt_trainkit
import opennmt
import yaml
tf.get_logger().setLevel("INFO")


class SingleProcessHorovod:
    Sum = "sum"

    def __init__(self, rank):
        self._rank = rank

    def rank(self):
        return self._rank

    def size(self):
        return 1

    def broadcast_variables(self, variables, root_rank):
        pass

    def allreduce(self, value, op=None):
        return tf.identity(value)  # a sum over one process: a copy, as Horovod returns

    def broadcast_object(self, value, root_rank, name=None):
        return value


config = yaml.safe_load(open(sys.argv[2]))
model = opennmt.config.load_model_from_file(sys.argv[1], as_builder=True)
opennmt.Runner(model, config, seed=5).train(hvd=SingleProcessHorovod(int(sys.argv[3])))
"""


def test_moving_average_lives_on_rank_zero(tmp_path, corpus, model_file):
    script = tmp_path / "horovod.py"
    script.write_text(HOROVOD)
    for rank in (0, 1):
        config = write_yaml(tmp_path / f"rank{rank}.yml", {
            "model_dir": str(tmp_path / f"rank{rank}"),
            "data": data_config(corpus),
            "params": {"optimizer": "Adam", "learning_rate": 0.01},
            "train": {"batch_size": 8, "batch_type": "examples", "max_step": 4, "save_checkpoints_steps": 2,
                      "moving_average_decay": 0.9},
        })
        run([sys.executable, str(script), model_file, config, str(rank)])
    tensors = all_tensors(str(tmp_path / "rank0" / "ckpt-4"))
    assert int(tensors[f"moving_average/num_updates{VALUE}"]) == 4
    # As in OpenNMT-tf, only rank 0 saves checkpoints (and keeps the average).
    rank1 = tmp_path / "rank1"
    assert not rank1.exists() or not [n for n in os.listdir(rank1) if n.startswith("ckpt-")]
