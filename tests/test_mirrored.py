"""The moving averages of a real ``opennmt.Runner`` training under MirroredStrategy with two
CPU replicas: each average against numpy on the run's own training weights."""

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
config = yaml.safe_load(open(sys.argv[2]))
model = opennmt.config.load_model_from_file(sys.argv[1], as_builder=True)
runner = opennmt.Runner(model, config, seed=4)
runner.train(num_devices=2)
"""


def test_mirrored_strategy_with_two_devices(tmp_path, corpus, model_file):
    """A run with two decays, a start step and a period on two replicas: each average against
    numpy on the run's own training weights."""
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    run([sys.executable, str(script), model_file, run_config(tmp_path, corpus, "run", max_step=STEPS, **EMA)])
    checkpoints = {step: all_tensors(str(tmp_path / "run" / f"ckpt-{step}")) for step in range(1, STEPS + 1)}
    averaged = averaged_names(checkpoints[STEPS])
    assert len(averaged) == 50
    trajectory = {step: np.concatenate([t[RAW + n].ravel() for n in averaged]) for step, t in checkpoints.items()}
    expected = numpy_averages(trajectory, DECAYS, START, EVERY)
    for step, tensors in checkpoints.items():
        for decay, prefix in ((0.45, ""), (0.25, SECOND)):
            np.testing.assert_allclose(np.concatenate([tensors[prefix + n].ravel() for n in averaged]),
                                       expected[step][decay], rtol=1e-5, atol=1e-7, err_msg=f"{decay} at {step}")
            updates = len([s for s in (3, 5, 7) if s <= step])
            assert int(tensors[f"moving_average/{layout.escape(repr(decay))}/num_updates{VALUE}"]) == updates
    assert not np.allclose(expected[STEPS][0.45], trajectory[STEPS])
