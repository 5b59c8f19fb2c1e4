"""The moving averages in process: hand-computed and numpy-computed updates (several decays,
start step, period), the swap, the state saved and restored by name, the checkpoint layout read
without TensorFlow, and the checks of the YAML keys."""

from __future__ import annotations

import numpy as np
import opennmt
import pytest
import tensorflow as tf

from onmt_trainkit import config
from onmt_trainkit import moving_average_layout as layout
from onmt_trainkit.errors import ConfigError
from onmt_trainkit.moving_average import (
    CheckpointTensors,
    MovingAverage,
    StateMismatchError,
    effective_decay,
    restore_training_weights,
    variable_names,
)

VALUE = layout.VALUE_SUFFIX


def make(decay=0.5, **kwargs):
    weights = tf.Variable([1.0, 2.0])
    step = tf.Variable(0, dtype=tf.int64)
    return weights, step, MovingAverage([weights], step, decay=decay, **kwargs)


def advance(weights, step, moving_average, value, at):
    weights.assign(value)
    step.assign(at)
    return float(moving_average.update())


def test_effective_decay():
    assert float(effective_decay(0.9999, 0)) == pytest.approx(0.1)
    assert float(effective_decay(0.9999, 10)) == pytest.approx(11 / 20)
    assert float(effective_decay(0.5, 20)) == 0.5
    assert float(effective_decay(0.9999, 10**6)) == pytest.approx(0.9999)
    assert float(effective_decay(0.5, 20, every=3)) == 0.125
    assert float(effective_decay(0.9999, 10, every=2)) == pytest.approx((11 / 20) ** 2)


def test_update_hand_computed():
    weights, step, average = make(decay=0.5)
    assert advance(weights, step, average, [2.0, 4.0], 1) == 0.0  # the first update copies
    np.testing.assert_array_equal(average.average()[0].numpy(), [2.0, 4.0])
    # Step 2: d = min(0.5, 3 / 12) = 0.25; a = a - (a - w) * 0.75.
    assert advance(weights, step, average, [4.0, 8.0], 2) == 0.25
    np.testing.assert_allclose(average.average()[0].numpy(), [3.5, 7.0])
    # Step 20: d = min(0.5, 21 / 30) = 0.5.
    assert advance(weights, step, average, [0.0, 0.0], 20) == 0.5
    np.testing.assert_allclose(average.average()[0].numpy(), [1.75, 3.5])
    assert average.num_updates == 3


def test_start_step_and_period_hand_computed():
    """s = 4, k = 3: updates at steps 4 (a copy), 7, 10; d_t^3 with d_t = min(0.5, (1+t)/(10+t))."""
    weights, step, average = make(decay=0.5, start_step=4, every=3)
    for at in (1, 2, 3):
        assert advance(weights, step, average, [at, at], at) == 1.0  # no update before the start
        assert average.num_updates == 0
    assert advance(weights, step, average, [4.0, 4.0], 4) == 0.0
    np.testing.assert_array_equal(average.average()[0].numpy(), [4.0, 4.0])
    assert advance(weights, step, average, [5.0, 5.0], 5) == 1.0
    assert advance(weights, step, average, [6.0, 6.0], 6) == 1.0
    # Step 7: d_7 = min(0.5, 8 / 17) = 8 / 17, applied cubed; a = 4 - (4 - 7) * (1 - (8/17)^3).
    assert advance(weights, step, average, [7.0, 7.0], 7) == pytest.approx((8 / 17) ** 3)
    np.testing.assert_allclose(average.average()[0].numpy(), [4 + 3 * (1 - (8 / 17) ** 3)] * 2, rtol=1e-6)
    assert average.num_updates == 2


def numpy_averages(trajectory, decays, start, every):
    """An EMA of each decay over {step: weights}, written again in float64."""
    averages, history = {d: None for d in decays}, {}
    for t in sorted(trajectory):
        w = trajectory[t].astype(np.float64)
        if t >= start and (t - start) % every == 0:
            for d in decays:
                rate = 1 - min(d, (1 + t) / (10 + t)) ** every
                averages[d] = w.copy() if averages[d] is None else averages[d] - (averages[d] - w) * rate
        history[t] = {d: (w if a is None else a) for d, a in averages.items()}
    return history


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("start, every", [(0, 1), (5, 1), (0, 4), (6, 3)])
def test_several_decays_against_numpy(compiled, start, every):
    rng = np.random.default_rng(start * 10 + every)
    decays = [0.9, 0.6, 0.99]
    variables = [tf.Variable(rng.normal(size=(4, 3)).astype(np.float32)), tf.Variable(np.float32(0.5))]
    step = tf.Variable(0, dtype=tf.int64)
    average = MovingAverage(variables, step, decay=decays, start_step=start, every=every)
    update = tf.function(average.update) if compiled else average.update
    trajectory = {}
    for t in range(1, 31):
        for variable in variables:
            variable.assign_add(rng.normal(size=variable.shape).astype(np.float32))
        step.assign(t)
        update()
        trajectory[t] = [v.numpy().copy() for v in variables]
    expected = numpy_averages({t: np.concatenate([np.ravel(w) for w in ws]) for t, ws in trajectory.items()},
                              decays, start, every)[30]
    for decay in decays:
        ours = np.concatenate([np.ravel(a.numpy()) for a in average.average(decay)])
        np.testing.assert_allclose(ours, expected[decay], rtol=1e-5, err_msg=str(decay))
        assert average.num_updates_of(decay) == len([t for t in range(max(start, 1), 31) if (t - start) % every == 0])


def test_update_in_a_compiled_function():
    weights, step, average = make(decay=0.5)
    update = tf.function(average.update)
    for value, at in (([2.0, 4.0], 1), ([4.0, 8.0], 2), ([0.0, 0.0], 20)):
        weights.assign(value)
        step.assign(at)
        update()
    np.testing.assert_allclose(average.average()[0].numpy(), [1.75, 3.5])


def test_swap_and_restore():
    weights, step, average = make(decay=[0.5, 0.2])
    advance(weights, step, average, [2.0, 4.0], 1)
    advance(weights, step, average, [4.0, 8.0], 2)
    with average.shadow_variables():
        np.testing.assert_allclose(weights.numpy(), [3.5, 7.0])
    np.testing.assert_array_equal(weights.numpy(), [4.0, 8.0])
    with average.shadow_variables(0.2):  # d = min(0.2, 0.25): a = 2 - (2 - 4) * 0.8
        np.testing.assert_allclose(weights.numpy(), [3.6, 7.2])
    np.testing.assert_array_equal(weights.numpy(), [4.0, 8.0])
    np.testing.assert_allclose(average.average()[0].numpy(), [3.5, 7.0])


def test_an_average_that_has_not_started_is_the_weights():
    weights, step, average = make(decay=[0.5, 0.2], start_step=3)
    advance(weights, step, average, [2.0, 4.0], 1)
    with average.shadow_variables():
        np.testing.assert_array_equal(weights.numpy(), [2.0, 4.0])
        for decay in (0.5, 0.2):  # what a checkpoint written here saves as each average
            np.testing.assert_array_equal(average.average(decay)[0].numpy(), [2.0, 4.0])
    np.testing.assert_array_equal(weights.numpy(), [2.0, 4.0])


def test_swap_restores_the_training_weights_when_the_body_raises():
    weights, step, average = make(decay=0.5)
    advance(weights, step, average, [2.0, 4.0], 1)
    advance(weights, step, average, [4.0, 8.0], 2)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        with average.shadow_variables():
            np.testing.assert_allclose(weights.numpy(), [3.5, 7.0])
            raise RuntimeError("evaluation failed")
    np.testing.assert_array_equal(weights.numpy(), [4.0, 8.0])
    np.testing.assert_allclose(average.average()[0].numpy(), [3.5, 7.0])


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


# The checkpoint layout, by name.

class Model(tf.Module):
    """A model whose variables sit at nested object paths, one of them with a '.' in its name."""

    def __init__(self, frozen=False):
        super().__init__()
        self.encoder = tf.Module()
        self.encoder.kernel = tf.Variable([[1.0, 2.0], [3.0, 4.0]])
        self.encoder.bias = tf.Variable([0.5, -0.5])
        self.decoder = tf.Module()
        setattr(self.decoder, "out.proj", tf.Variable([7.0, 8.0, 9.0]))
        self.frozen = frozen

    @property
    def trainable(self):
        variables = [self.encoder.kernel, self.encoder.bias, getattr(self.decoder, "out.proj")]
        return variables[1:] if self.frozen else variables


def averaged(model, decay=(0.5, 0.2), **kwargs):
    step = tf.Variable(0, dtype=tf.int64)
    names = variable_names(model)
    average = MovingAverage(model.trainable, step, decay=decay, names=[names[v.ref()] for v in model.trainable],
                            **kwargs)
    return step, average


def train(model, step, average, steps, scale=1.0):
    for t in range(int(step.numpy()) + 1, int(step.numpy()) + 1 + steps):
        for variable in model.trainable:
            variable.assign_add(tf.fill(variable.shape, scale * t))
        step.assign(t)
        average.update()


def save(path, model, step, average=None):
    objects = dict(model=model, step=step)
    if average is None:
        return tf.train.Checkpoint(**objects).write(str(path))
    with average.shadow_variables():
        return tf.train.Checkpoint(**objects, moving_average=average.state).write(str(path))


def test_variable_names_are_the_checkpoint_names(tmp_path):
    model = Model()
    names = set(CheckpointTensors(save(tmp_path / "ckpt", model, tf.Variable(0))).names)
    assert {name + VALUE for name in variable_names(model).values()} == {n for n in names if n.startswith("model/")}


def test_state_is_saved_by_name(tmp_path):
    model = Model()
    step, average = averaged(model)
    train(model, step, average, 3)
    training = [v.numpy().copy() for v in model.trainable]
    path = save(tmp_path / "ckpt", model, step, average)
    checkpoint = CheckpointTensors(path)
    model_names = ["model/encoder/kernel", "model/encoder/bias", "model/decoder/out..proj"]
    assert checkpoint.names == {"_CHECKPOINTABLE_OBJECT_GRAPH", "step" + VALUE} | {
        name + VALUE for name in model_names
    } | {f"moving_average/raw/{name}{VALUE}" for name in model_names} | {
        f"moving_average/0..2/{name}{VALUE}" for name in model_names
    } | {f"moving_average/0..5/num_updates{VALUE}", f"moving_average/0..2/num_updates{VALUE}"}
    for name, value, first, second in zip(model_names, training, average.average(0.5), average.average(0.2)):
        np.testing.assert_array_equal(checkpoint.read(f"moving_average/raw/{name}{VALUE}"), value)
        np.testing.assert_array_equal(checkpoint.read(name + VALUE), first.numpy())
        np.testing.assert_array_equal(checkpoint.read(f"moving_average/0..2/{name}{VALUE}"), second.numpy())
    assert checkpoint.read(f"moving_average/0..5/num_updates{VALUE}") == 3
    # Read without TensorFlow: which tensor holds which weights.
    assert layout.held_decays(checkpoint.names) == [0.2, 0.5]
    assert layout.model_decay(checkpoint.names) == 0.5
    assert layout.weight_names(checkpoint.names, "raw") == {
        name + VALUE: f"moving_average/raw/{name}{VALUE}" for name in model_names}
    assert layout.weight_names(checkpoint.names, "ema") == {name + VALUE: name + VALUE for name in model_names}
    assert layout.weight_names(checkpoint.names, "ema:0.5") == layout.weight_names(checkpoint.names, "ema")
    assert layout.weight_names(checkpoint.names, "ema:0.20") == {
        name + VALUE: f"moving_average/0..2/{name}{VALUE}" for name in model_names}


def test_state_is_restored_exactly(tmp_path):
    model = Model()
    step, average = averaged(model, every=2)
    train(model, step, average, 5)
    path = save(tmp_path / "ckpt", model, step, average)
    expected = {d: [a.numpy().copy() for a in average.average(d)] for d in (0.5, 0.2)}
    training = [v.numpy().copy() for v in model.trainable]
    restored_model = Model()
    tf.train.Checkpoint(model=restored_model).read(path).expect_partial()  # as OpenNMT-tf does
    checkpoint = CheckpointTensors(path)
    names = variable_names(restored_model)
    restore_training_weights(checkpoint, {names[v.ref()]: v for v in restored_model.trainable},
                             restored_model.trainable)
    for variable, value in zip(restored_model.trainable, training):
        np.testing.assert_array_equal(variable.numpy(), value)
    _, restored = averaged(restored_model, decay=(0.2, 0.5), every=2)  # the order may change
    report = restored.restore(checkpoint)  # updates at steps 2 and 4
    assert report.num_updates == {0.2: 2, 0.5: 2} and not (report.missing or report.extra or report.new_decays)
    for decay in (0.5, 0.2):
        for ours, value in zip(restored.average(decay), expected[decay]):
            np.testing.assert_array_equal(ours.numpy(), value)


def restore_into(model, path, **kwargs):
    tf.train.Checkpoint(model=model).read(path).expect_partial()
    checkpoint = CheckpointTensors(path)
    names = variable_names(model)
    restore_training_weights(checkpoint, {names[v.ref()]: v for v in
                                          [model.encoder.kernel, model.encoder.bias, getattr(model.decoder, "out.proj")]},
                             model.trainable)
    step, average = averaged(model, **kwargs)
    return step, average, average.restore(checkpoint)


def test_a_variable_no_longer_averaged_is_ignored_and_keeps_its_training_weights(tmp_path):
    model = Model()
    step, average = averaged(model)
    train(model, step, average, 4)
    kernel = model.encoder.kernel.numpy().copy()
    expected = [a.numpy().copy() for a in average.average(0.2)[1:]]
    path = save(tmp_path / "ckpt", model, step, average)
    frozen = Model(frozen=True)
    _, restored, report = restore_into(frozen, path)
    np.testing.assert_array_equal(frozen.encoder.kernel.numpy(), kernel)  # the training weights, not the average
    assert report.extra == ["model/encoder/kernel"] and not report.missing
    assert any("no longer averaged; ignored: model/encoder/kernel" in line for line in report.lines())
    for ours, value in zip(restored.average(0.2), expected):  # by name, not by position
        np.testing.assert_array_equal(ours.numpy(), value)


def test_a_variable_new_to_the_average_starts_from_its_current_value(tmp_path):
    frozen = Model(frozen=True)
    step, average = averaged(frozen)
    train(frozen, step, average, 4)
    path = save(tmp_path / "ckpt", frozen, step, average)
    model = Model()
    step, restored, report = restore_into(model, path)
    assert report.missing == ["model/encoder/kernel"] and not report.extra
    assert any("1 averaged variables have no average" in line and "model/encoder/kernel" in line
               for line in report.lines())
    start = model.encoder.kernel.numpy().copy()
    np.testing.assert_array_equal(restored.average(0.5)[0].numpy(), start)
    step.assign(4)
    train(model, step, restored, 1)  # step 5: d = min(0.5, 6 / 15) = 0.4
    np.testing.assert_allclose(restored.average(0.5)[0].numpy(),
                               start - (start - model.encoder.kernel.numpy()) * 0.6, rtol=1e-6)


def test_new_and_dropped_decays(tmp_path):
    model = Model()
    step, average = averaged(model)
    train(model, step, average, 4)
    path = save(tmp_path / "ckpt", model, step, average)
    _, restored, report = restore_into(Model(), path, decay=(0.5, 0.9))
    assert report.num_updates == {0.5: 4} and report.new_decays == [0.9] and report.dropped_decays == [0.2]
    assert restored.num_updates_of(0.9) == 0
    lines = "\n".join(report.lines())
    assert "holds no average of decay 0.9: it starts from the weights at its next update" in lines
    assert "the average of decay 0.2 in" in lines and "is dropped" in lines


def test_a_shape_mismatch_is_refused_naming_the_variable(tmp_path):
    model = Model()
    step, average = averaged(model)
    train(model, step, average, 2)
    path = save(tmp_path / "ckpt", model, step, average)
    other = Model()
    other.decoder = tf.Module()
    setattr(other.decoder, "out.proj", tf.Variable([1.0, 2.0]))
    names = variable_names(other)
    message = (r"has shape \[3\] but the model's variable model/decoder/out..proj has shape \[2\]; "
               "the moving average cannot be restored into it")
    with pytest.raises(StateMismatchError, match=r"moving_average/raw/model/decoder/out..proj/.ATTRIBUTES/"
                                                 r"VARIABLE_VALUE " + message):
        restore_training_weights(CheckpointTensors(path), {names[v.ref()]: v for v in other.trainable}, other.trainable)
    _, restored = averaged(other, decay=0.2)
    with pytest.raises(StateMismatchError, match=r"moving_average/0..2/model/decoder/out..proj/.ATTRIBUTES/"
                                                 r"VARIABLE_VALUE " + message):
        restored.restore(CheckpointTensors(path))


class OldState(tf.Module):
    """The state as onmt-trainkit saved it before 0.2.0 (commit f7cd75b): by position."""

    def __init__(self, weights, num_updates):
        super().__init__(name="moving_average")
        self.weights = [tf.Variable(w, trainable=False, name="weight") for w in weights]
        self.num_updates = tf.Variable(num_updates, dtype=tf.int64, trainable=False, name="num_updates")


def test_old_layout_is_restored_by_position(tmp_path):
    model = Model()
    step, average = averaged(model, decay=0.5)
    train(model, step, average, 4)
    with average.shadow_variables():
        old = OldState([a.numpy() for a in average.average()], 4)  # the training weights
        path = tf.train.Checkpoint(model=model, moving_average=old).write(str(tmp_path / "ckpt"))
    names = CheckpointTensors(path).names
    assert {f"moving_average/weights/{i}{VALUE}" for i in range(3)} | {f"moving_average/num_updates{VALUE}"} <= names
    assert layout.layout(names) == layout.BY_POSITION
    restored_model = Model()
    _, restored, report = restore_into(restored_model, path, decay=(0.5, 0.2))
    assert report.num_updates == {0.5: 4} and report.new_decays == [0.2]
    assert "written by position (before onmt-trainkit 0.2.0)" in report.lines()[0]
    for variable, expected in zip(restored_model.trainable, model.trainable):
        np.testing.assert_array_equal(variable.numpy(), expected.numpy())
    for ours, expected in zip(restored.average(), average.average()):
        np.testing.assert_array_equal(ours.numpy(), expected.numpy())
    with pytest.raises(StateMismatchError, match="keeps the training weights of 3 trainable variables by position "
                                                 r"\(the layout before onmt-trainkit 0.2.0\) but the model has 2"):
        restore_into(Model(frozen=True), path)
    with pytest.raises(layout.LayoutError, match="only 'ema' \\(its model weights\\) can be read"):
        layout.weight_names(names, "raw")


def test_no_state(tmp_path):
    model = Model()
    path = save(tmp_path / "ckpt", model, tf.Variable(3, dtype=tf.int64))
    _, restored, report = restore_into(Model(), path)
    assert restored.num_updates == 0
    assert report.lines() == [f"{path} has no moving average state; the averages start from the current weights"]
    names = CheckpointTensors(path).names
    assert layout.weight_names(names, "raw") == layout.weight_names(names, "ema")
    with pytest.raises(layout.LayoutError, match="holds no average of decay 0.5; it holds no moving average"):
        layout.weight_names(names, "ema:0.5")


@pytest.mark.parametrize("name", ["0.9999", "1e-05", "a/b.c", "..S/", "raw"])
def test_escape_round_trip(name):
    assert layout.unescape(layout.escape(name)) == name


@pytest.mark.parametrize("weights", ["average", "ema:", "ema:1", "ema:x", "raw:0.9", "EMA"])
def test_bad_weights_request(weights):
    with pytest.raises(layout.LayoutError, match="weights must be raw, ema or ema:<decay> with 0 < decay < 1, got"):
        layout.parse_weights(weights)


def test_unknown_decay_names_those_held():
    names = {"model/w" + VALUE, "moving_average/raw/model/w" + VALUE, "moving_average/0..9/num_updates" + VALUE,
             "moving_average/0..99/num_updates" + VALUE, "moving_average/0..99/model/w" + VALUE}
    with pytest.raises(layout.LayoutError, match="holds no average of decay 0.999; it holds ema:0.9, ema:0.99"):
        layout.weight_names(names, "ema:0.999")


# The YAML keys.

@pytest.mark.parametrize("train, message", [
    ({"moving_average_decay": 1.5}, "train.moving_average_decay must be a number > 0 and < 1, got 1.5"),
    ({"moving_average_decay": []},
     r"train.moving_average_decay must be a number > 0 and < 1, or a non-empty list of such numbers, got \[\]"),
    ({"moving_average_decay": [0.999, 1]}, r"train.moving_average_decay\[1\] must be a number > 0 and < 1, got 1"),
    ({"moving_average_decay": [0.999, "0.9"]},
     r"train.moving_average_decay\[1\] must be a number > 0 and < 1, got '0.9'"),
    ({"moving_average_decay": [0.999, 0.9, 0.999]},
     r"train.moving_average_decay must be a list of distinct decays \(0.999 is given twice\), "
     r"got \[0.999, 0.9, 0.999\]"),
    ({"moving_average_decay": 0.9, "moving_average_start_step": -1},
     "train.moving_average_start_step must be an integer >= 0, got -1"),
    ({"moving_average_decay": 0.9, "moving_average_start_step": 2.5},
     "train.moving_average_start_step must be an integer >= 0, got 2.5"),
    ({"moving_average_decay": 0.9, "moving_average_every": 0}, "train.moving_average_every must be an integer >= 1, got 0"),
    ({"moving_average_every": "2"}, "train.moving_average_every must be an integer >= 1, got '2'"),
    ({"moving_average_decay": 0.9, "moving_average_eval_all": "yes"},
     "train.moving_average_eval_all must be true or false, got 'yes'"),
])
def test_bad_settings(train, message):
    with pytest.raises(ConfigError, match=message):
        config.moving_average_settings(train)


def test_settings():
    assert config.moving_average_settings({}) is None
    assert config.moving_average_settings({"moving_average_decay": 0.9999}) == config.MovingAverageSettings((0.9999,))
    assert config.moving_average_settings({
        "moving_average_decay": [0.999, 0.9999], "moving_average_start_step": 1000.0,
        "moving_average_every": 4, "moving_average_eval_all": True,
    }) == config.MovingAverageSettings((0.999, 0.9999), start_step=1000, every=4, eval_all=True)


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.5, "0.9"])
def test_bad_decay(decay):
    with pytest.raises(ConfigError, match=f"decay must be a number > 0 and < 1, got {decay!r}"):
        make(decay=decay)


def test_step_must_be_a_variable():
    with pytest.raises(TypeError, match="step should be a tf.Variable"):
        MovingAverage([tf.Variable(1.0)], 3)
