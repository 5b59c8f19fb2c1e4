"""The moving average: hand-computed updates, the swap, and OpenNMT-tf's values."""

from __future__ import annotations

import numpy as np
import opennmt
import pytest
import tensorflow as tf

from onmt_trainkit.errors import ConfigError
from onmt_trainkit.moving_average import MovingAverage, effective_decay


def make(decay=0.5):
    weights = tf.Variable([1.0, 2.0])
    step = tf.Variable(0, dtype=tf.int64)
    return weights, step, MovingAverage([weights], step, decay=decay)


def advance(weights, step, moving_average, value, at):
    weights.assign(value)
    step.assign(at)
    return float(moving_average.update())


def test_effective_decay():
    assert float(effective_decay(0.9999, 0)) == pytest.approx(0.1)
    assert float(effective_decay(0.9999, 10)) == pytest.approx(11 / 20)
    assert float(effective_decay(0.5, 20)) == 0.5
    assert float(effective_decay(0.9999, 10**6)) == pytest.approx(0.9999)


def test_update_hand_computed():
    weights, step, average = make(decay=0.5)
    assert advance(weights, step, average, [2.0, 4.0], 1) == 0.0  # the first update copies
    np.testing.assert_array_equal(average.state.weights[0].numpy(), [2.0, 4.0])
    # Step 2: d = min(0.5, 3 / 12) = 0.25; a = a - (a - w) * 0.75.
    assert advance(weights, step, average, [4.0, 8.0], 2) == 0.25
    np.testing.assert_allclose(average.state.weights[0].numpy(), [3.5, 7.0])
    # Step 20: d = min(0.5, 21 / 30) = 0.5.
    assert advance(weights, step, average, [0.0, 0.0], 20) == 0.5
    np.testing.assert_allclose(average.state.weights[0].numpy(), [1.75, 3.5])
    assert average.num_updates == 3


def test_update_in_a_compiled_function():
    weights, step, average = make(decay=0.5)
    update = tf.function(average.update)
    for value, at in (([2.0, 4.0], 1), ([4.0, 8.0], 2), ([0.0, 0.0], 20)):
        weights.assign(value)
        step.assign(at)
        update()
    np.testing.assert_allclose(average.state.weights[0].numpy(), [1.75, 3.5])


def test_swap_and_restore():
    weights, step, average = make(decay=0.5)
    advance(weights, step, average, [2.0, 4.0], 1)
    advance(weights, step, average, [4.0, 8.0], 2)
    with average.shadow_variables():
        np.testing.assert_allclose(weights.numpy(), [3.5, 7.0])
    np.testing.assert_array_equal(weights.numpy(), [4.0, 8.0])
    np.testing.assert_allclose(average.state.weights[0].numpy(), [3.5, 7.0])


def test_swap_restores_the_training_weights_when_the_body_raises():
    weights, step, average = make(decay=0.5)
    advance(weights, step, average, [2.0, 4.0], 1)
    advance(weights, step, average, [4.0, 8.0], 2)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        with average.shadow_variables():
            np.testing.assert_allclose(weights.numpy(), [3.5, 7.0])
            raise RuntimeError("evaluation failed")
    np.testing.assert_array_equal(weights.numpy(), [4.0, 8.0])
    np.testing.assert_allclose(average.state.weights[0].numpy(), [3.5, 7.0])


def test_unfused_update_is_bit_identical_to_opennmt():
    """Under a distribution strategy the update is not fused: OpenNMT-tf's values, bit for bit."""
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    rng = np.random.default_rng(1)
    with strategy.scope():
        ours_weights = [tf.Variable(rng.normal(size=(5, 3)).astype(np.float32))]
        stock_weights = [tf.Variable(ours_weights[0].numpy())]
        step = tf.Variable(1, dtype=tf.int64)
        ours = MovingAverage(ours_weights, step, decay=0.99)
        stock = opennmt.training.MovingAverage(stock_weights, step, decay=0.99)
        for at in range(1, 30):
            update = rng.normal(size=(5, 3)).astype(np.float32)
            ours_weights[0].assign_add(update)
            stock_weights[0].assign_add(update)
            step.assign(at)
            ours.update()
            stock.update()
    with ours.shadow_variables(), stock.shadow_variables():
        np.testing.assert_array_equal(ours_weights[0].numpy(), stock_weights[0].numpy())


def test_same_values_as_opennmt_for_an_uninterrupted_run():
    rng = np.random.default_rng(0)
    ours_weights = [tf.Variable(rng.normal(size=(3, 4)).astype(np.float32)), tf.Variable(np.float32(0.5))]
    stock_weights = [tf.Variable(w.numpy()) for w in ours_weights]
    ours_step, stock_step = tf.Variable(0, dtype=tf.int64), tf.Variable(0, dtype=tf.int64)
    ours = stock = None
    for at in range(1, 60):
        for a, b in zip(ours_weights, stock_weights):
            update = rng.normal(size=a.shape).astype(np.float32)
            a.assign_add(update)
            b.assign_add(update)
        ours_step.assign(at)
        stock_step.assign(at)
        if ours is None:  # OpenNMT-tf creates its average after the first step
            ours = MovingAverage(ours_weights, ours_step, decay=0.99)
            stock = opennmt.training.MovingAverage(stock_weights, stock_step, decay=0.99)
        ours.update()
        stock.update()
    # The plugin's update is one fused multiply-add (XLA) where OpenNMT-tf rounds twice: after
    # 60 updates the values agree within a few units in the last place.
    with ours.shadow_variables(), stock.shadow_variables():
        for a, b in zip(ours_weights, stock_weights):
            np.testing.assert_array_max_ulp(a.numpy(), b.numpy(), maxulp=8)


def test_state_is_saved_and_restored(tmp_path):
    weights, step, average = make(decay=0.5)
    advance(weights, step, average, [2.0, 4.0], 1)
    advance(weights, step, average, [4.0, 8.0], 2)
    path = tf.train.Checkpoint(moving_average=average.state).save(str(tmp_path / "ckpt"))
    _, _, restored = make(decay=0.5)
    tf.train.Checkpoint(moving_average=restored.state).restore(path).assert_consumed()
    assert restored.num_updates == 2
    np.testing.assert_allclose(restored.state.weights[0].numpy(), [3.5, 7.0])


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.5, "0.9"])
def test_bad_decay(decay):
    with pytest.raises(ConfigError, match=f"decay must be a number > 0 and < 1, got {decay!r}"):
        make(decay=decay)


def test_step_must_be_a_variable():
    with pytest.raises(TypeError, match="step should be a tf.Variable"):
        MovingAverage([tf.Variable(1.0)], 3)
