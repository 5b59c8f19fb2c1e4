"""The moving average in real ``onmt-main`` training: checkpoint layout, exact resume,
old checkpoints, MirroredStrategy."""

from __future__ import annotations

import re
import sys

import numpy as np
import opennmt

from conftest import data_config, onmt_main, run, write_yaml
from test_end_to_end import VALUE, all_tensors, logged_rates

def single_example_config(root, corpus, name, config_name=None, **train):
    return write_yaml(root / f"{config_name or name}.yml", {
        "model_dir": str(root / name),
        "data": data_config(corpus, single_example=True),
        "params": {"optimizer": "Adam", "learning_rate": 0.01},
        "train": {"batch_size": 1, "batch_type": "examples", "save_checkpoints_steps": 1,
                  "keep_checkpoint_max": 100, "save_summary_steps": 100, **train},
    })


def trainable_keys(model_file: str, corpus, saved: dict) -> list[str]:
    """The checkpoint keys of the model's trainable variables, in order."""
    model = opennmt.config.load_model_from_file(model_file)
    model.initialize(data_config(corpus))
    model.create_variables()
    names = {v.ref(): k for k, v in opennmt.utils.misc.get_variables_name_mapping(model, "model").items()
             if k in saved}
    return [names[v.ref()] for v in model.trainable_variables]


def test_checkpoints_hold_the_moving_average_and_do_not_change_training(tmp_path, corpus, model_file):
    steps, decay = 8, 0.7
    with_ema = single_example_config(tmp_path, corpus, "ema", max_step=steps, moving_average_decay=decay)
    without = single_example_config(tmp_path, corpus, "raw", max_step=steps)
    onmt_main("--model", model_file, "--config", with_ema, "--seed", "2", "train")
    onmt_main("--model", model_file, "--config", without, "--seed", "2", "train")
    keys = trainable_keys(model_file, corpus, all_tensors(str(tmp_path / "raw" / "ckpt-1")))
    average = None
    for step in range(1, steps + 1):
        raw = all_tensors(str(tmp_path / "raw" / f"ckpt-{step}"))
        ema = all_tensors(str(tmp_path / "ema" / f"ckpt-{step}"))
        # The raw weights saved beside the average are those of the run without EMA.
        for index, key in enumerate(keys):
            np.testing.assert_array_equal(ema[f"moving_average/weights/{index}{VALUE}"], raw[key])
        # The model's weights are the average, recomputed here from the raw trajectory.
        if average is None:
            average = {k: raw[k].astype(np.float64) for k in keys}
        else:
            rate = 1 - min(decay, (1 + step) / (10 + step))
            average = {k: average[k] - (average[k] - raw[k]) * rate for k in keys}
        for key in keys:
            np.testing.assert_allclose(ema[key], average[key], rtol=1e-5, atol=1e-6)
        assert int(ema[f"moving_average/num_updates{VALUE}"]) == step
    assert any(not np.allclose(ema[k], raw[k]) for k in keys)  # the average is not the raw weights


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, corpus, model_file):
    config = dict(moving_average_decay=0.9, save_checkpoints_steps=10)
    whole = single_example_config(tmp_path, corpus, "whole", max_step=30, **config)
    first = single_example_config(tmp_path, corpus, "parts", "first", max_step=15, **config)
    second = single_example_config(tmp_path, corpus, "parts", "second", max_step=30, **config)
    onmt_main("--model", model_file, "--config", whole, "--seed", "3", "train")
    onmt_main("--model", model_file, "--config", first, "--seed", "3", "train")
    process = onmt_main("--model", model_file, "--config", second, "--seed", "3", "train")
    assert re.search(r"Moving average: restored the training weights and the average \(15 updates\) "
                     r"from .*parts/ckpt-15", process.stderr)
    a, b = all_tensors(str(tmp_path / "whole" / "ckpt-30")), all_tensors(str(tmp_path / "parts" / "ckpt-30"))
    assert set(a) == set(b) and len(a) > 50
    for name in set(a) - {f"save_counter{VALUE}"}:  # save_counter counts this process's saves
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_resume_from_a_checkpoint_without_moving_average(tmp_path, corpus, model_file):
    stock_model = tmp_path / "stock_model.py"
    stock_model.write_text(open(model_file).read().replace("import onmt_trainkit", ""))
    first = single_example_config(tmp_path, corpus, "run", "first", max_step=5)
    onmt_main("--model", str(stock_model), "--config", first, "train")
    second = single_example_config(tmp_path, corpus, "run", "second", max_step=10, moving_average_decay=0.9)
    process = onmt_main("--model", model_file, "--config", second, "train")
    assert re.search(r"Moving average: .*run/ckpt-5 has no moving average state; the average starts "
                     r"from the current weights", process.stderr)
    assert int(all_tensors(str(tmp_path / "run" / "ckpt-10"))[f"moving_average/num_updates{VALUE}"]) == 5


def test_bad_moving_average_decay_is_refused(tmp_path, corpus, model_file):
    config = single_example_config(tmp_path, corpus, "run", max_step=5, moving_average_decay=1.5)
    process = onmt_main("--model", model_file, "--config", config, "train", check=False)
    assert process.returncode != 0
    assert "train.moving_average_decay must be a number > 0 and < 1, got 1.5" in process.stderr


def test_worked_example_logs_the_floor(tmp_path, corpus, model_file):
    config = write_yaml(tmp_path / "noam.yml", {
        "model_dir": str(tmp_path / "run"),
        "data": data_config(corpus),
        "params": {"optimizer": "Adam", "learning_rate": 2, "decay_type": "NoamDecay",
                   "decay_params": {"model_dim": 4, "warmup_steps": 8000}, "minimum_learning_rate": 0.0001},
        "train": {"batch_size": 8, "batch_type": "examples", "max_step": 2, "save_summary_steps": 1},
    })
    process = onmt_main("--model", model_file, "--config", config, "train")
    assert logged_rates(process.stderr)[1] == "0.000100"


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
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    for max_step in (6, 12):
        config = single_example_config(tmp_path, corpus, "run", f"up_to_{max_step}", max_step=max_step,
                                       moving_average_decay=0.9, save_checkpoints_steps=3)
        process = run([sys.executable, str(script), model_file, config])
    assert "Moving average: restored the training weights and the average (6 updates)" in process.stderr
    tensors = all_tensors(str(tmp_path / "run" / "ckpt-12"))
    assert int(tensors[f"moving_average/num_updates{VALUE}"]) == 12
    keys = trainable_keys(model_file, corpus, tensors)
    assert any(not np.array_equal(tensors[k], tensors[f"moving_average/weights/{i}{VALUE}"])
               for i, k in enumerate(keys))
