"""The moving averages of a real ``opennmt.Runner`` training under MirroredStrategy with two
CPU replicas: the training weights the run saves are those of the same run without moving
average, and each average matches numpy's on them."""

from __future__ import annotations

import sys

import numpy as np

from conftest import run
from onmt_trainkit import moving_average_layout as layout
from test_end_to_end import VALUE, all_tensors
from test_moving_average import numpy_averages
from test_training import DECAYS, EMA, EVERY, RAW, SECOND, START, STEPS, averaged_names, run_config

MIRRORED = """
import sys
import tensorflow as tf
# The two replicas' collective operations wait for each other: with the default pool of
# one thread per core, both threads of a 2-core machine can end up waiting.
tf.config.threading.set_inter_op_parallelism_threads(8)
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
import onmt_trainkit
import opennmt
import yaml
tf.get_logger().setLevel("INFO")
for path in sys.argv[2:]:
    config = yaml.safe_load(open(path))
    model = opennmt.config.load_model_from_file(sys.argv[1], as_builder=True)
    runner = opennmt.Runner(model, config, seed=4)
    runner.train(num_devices=2)
"""


def test_mirrored_strategy_with_two_devices(tmp_path, corpus, model_file):
    """A run with two decays, a start step and a period on two replicas, and the same run
    without moving average: the first saves the second's weights as its training weights, and
    each of its averages is numpy's average of them."""
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    run([sys.executable, str(script), model_file, run_config(tmp_path, corpus, "run", max_step=STEPS, **EMA),
         run_config(tmp_path, corpus, "base", max_step=STEPS)])
    checkpoints = {step: all_tensors(str(tmp_path / "run" / f"ckpt-{step}")) for step in range(1, STEPS + 1)}
    averaged = averaged_names(checkpoints[STEPS])
    assert len(averaged) == 50
    trajectory = {}
    for step, tensors in checkpoints.items():
        base = all_tensors(str(tmp_path / "base" / f"ckpt-{step}"))
        for name in averaged:  # the moving average does not change training
            np.testing.assert_array_equal(tensors[RAW + name], base[name], err_msg=f"{name} at {step}")
        trajectory[step] = np.concatenate([base[n].ravel() for n in averaged])
    expected = numpy_averages(trajectory, DECAYS, START, EVERY)
    for step, tensors in checkpoints.items():
        for decay, prefix in ((0.45, ""), (0.25, SECOND)):
            np.testing.assert_allclose(np.concatenate([tensors[prefix + n].ravel() for n in averaged]),
                                       expected[step][decay], rtol=1e-5, atol=1e-7, err_msg=f"{decay} at {step}")
            updates = len([s for s in (3, 5, 7) if s <= step])
            assert int(tensors[f"moving_average/{layout.escape(repr(decay))}/num_updates{VALUE}"]) == updates
    assert not np.allclose(expected[STEPS][0.45], trajectory[STEPS])
