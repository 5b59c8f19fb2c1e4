"""Weight decay that follows the learning rate (``params.weight_decay``): the formula checked
against numpy, in optimizers and in a real ``onmt-main train`` run; the refusals and the
warning around ``optimizer_params.weight_decay``; TensorBoard and the plot tool."""

from __future__ import annotations

import csv
import functools
import re
import sys

import numpy as np
import opennmt
import pytest
import tensorflow as tf
from opennmt.optimizers.utils import get_optimizer_class

import reference as ref
from conftest import assert_refused, data_config, in_process, onmt_main, run, write_yaml
from onmt_trainkit import config, summary, weight_decay
from onmt_trainkit.cli import plot_schedule_main
from onmt_trainkit.errors import ConfigError
from onmt_trainkit.tensor_bundle import CheckpointReader
from test_end_to_end import tensorboard_scalars

# ---- validation -----------------------------------------------------------------------


def test_defaults_and_values():
    assert config.weight_decay({"optimizer": "Adam", "learning_rate": 1}) is None
    assert config.weight_decay({"optimizer": "Adam", "weight_decay": 0}) is None
    settings = config.weight_decay({"optimizer": "LazyAdam", "weight_decay": 0.01})
    assert settings == weight_decay.WeightDecay(0.01, ("bias", "layer_norm"), exclude_given=False)
    settings = config.weight_decay({"optimizer": "SGD", "weight_decay": 1, "weight_decay_exclude": []})
    assert settings == weight_decay.WeightDecay(1.0, (), exclude_given=True)
    # AdamW takes params.weight_decay too: its own decay becomes the scaled one.
    assert config.weight_decay({"optimizer": "AdamW", "weight_decay": 0.01}).coefficient == 0.01


@pytest.mark.parametrize(
    "params,message",
    [
        ({"weight_decay": -0.1}, "params.weight_decay must be a number >= 0, got -0.1"),
        ({"weight_decay": "0.01"}, "params.weight_decay must be a number >= 0, got '0.01'"),
        ({"weight_decay": True}, "params.weight_decay must be a number >= 0, got True"),
        ({"weight_decay": 0.01, "weight_decay_exclude": "bias"},
         "params.weight_decay_exclude must be a list of regular expressions ([] decays every weight), "
         "got 'bias'"),
        ({"weight_decay": 0.01, "weight_decay_exclude": ["bias", 3]},
         "params.weight_decay_exclude[] must be a non-empty regular expression (a string), got 3"),
        ({"weight_decay": 0.01, "weight_decay_exclude": [""]},
         "params.weight_decay_exclude[] must be a non-empty regular expression (a string), got ''"),
        ({"weight_decay": 0.01, "weight_decay_exclude": ["layer_norm("]},
         "params.weight_decay_exclude[] must be a valid regular expression (missing ), unterminated "
         "subpattern at position 10), got 'layer_norm('"),
        ({"weight_decay_exclude": ["bias"]},
         "params.weight_decay_exclude is set but params.weight_decay is not"),
        ({"optimizer_params": {"weight_decay": -1}},
         "optimizer_params.weight_decay must be a number >= 0, got -1"),
        ({"weight_decay": 0.01, "optimizer_params": {"exclude_from_weight_decay": ["bias"]}},
         "optimizer_params.exclude_from_weight_decay is set with params.weight_decay; use "
         "params.weight_decay_exclude instead"),
        ({"optimizer": "AdamW"}, "params.optimizer AdamW needs a weight decay, got none: set "
         "params.weight_decay > 0"),
        ({"optimizer": "SGDW", "weight_decay": 0},
         "params.optimizer SGDW needs a weight decay, got params.weight_decay 0: set"),
        ({"optimizer_params": []}, "params.optimizer_params must be a mapping of names to values, got []"),
    ],
)
def test_refused_values(params, message):
    with pytest.raises(ConfigError) as error:
        config.weight_decay({"optimizer": "Adam", **params})
    assert str(error.value).startswith(message)


def test_both_keys_refused_naming_both():
    params = {"optimizer": "AdamW", "weight_decay": 0.01, "optimizer_params": {"weight_decay": 0.01}}
    with pytest.raises(ConfigError, match=re.escape(
        "params.weight_decay (0.01) and optimizer_params.weight_decay (0.01) are both set; keep one: "
        "params.weight_decay decays w -= lr(s) * weight_decay * w (follows the learning rate), "
        "optimizer_params.weight_decay decays w -= weight_decay * w at every step")):
        config.weight_decay(params)
    with pytest.raises(ConfigError, match="are both set"):  # even when one of them is 0
        config.weight_decay({**params, "weight_decay": 0})


def test_warning_for_a_large_absolute_decay_only():
    def warning(value):
        return config.absolute_weight_decay_warning({"optimizer": "AdamW", "optimizer_params": {"weight_decay": value}})

    assert warning(0.001) is None and warning(0.0) is None
    assert config.absolute_weight_decay_warning({"optimizer": "Adam", "weight_decay": 0.01}) is None
    # 0.99 ** 100 = 0.366 (hand-computed: exp(100 * ln 0.99) = exp(-1.005) = 0.366)
    assert warning(0.01) == (
        "optimizer_params.weight_decay is 0.01: TensorFlow Addons applies it as given at every step, "
        "not scaled by the learning rate, w -= 0.01 * w after each update, so after 100 steps every "
        "decayed weight is multiplied by 0.37 (before the gradient updates); for decay that follows "
        "the learning rate (w -= lr(s) * 0.01 * w, as in BERT and PyTorch's AdamW), set "
        "params.weight_decay: 0.01 instead"
    )
    assert "multiplied by 0.9 " in warning(0.00105)  # 0.99895 ** 100 = 0.9001


def test_start_up_summary_names_the_decay_and_refuses_what_training_refuses():
    assert "weight decay" in summary.banner()
    params = {"optimizer": "LazyAdam", "learning_rate": 0.001, "weight_decay": 0.01}
    assert summary.describe({"params": params})[-1] == (
        "weight decay: w -= lr(s) * 0.01 * w (params.weight_decay), weights left out: bias, layer_norm")
    lines = summary.describe({"params": {**params, "weight_decay_exclude": ["/bias:0$", "gamma"]}, "train": {}})
    assert lines[-1] == "weight decay: w -= lr(s) * 0.01 * w (params.weight_decay), weights left out: /bias:0$, gamma"
    lines = summary.describe({"params": {**params, "weight_decay_exclude": []}})
    assert lines[-1].endswith("weights left out: none")
    assert summary.describe({"params": {**params, "weight_decay": 0}})[-1] == "weight decay: off"
    with pytest.raises(ConfigError, match=r"^params\.weight_decay cannot be combined with params\.optimizer LAMB: "):
        summary.describe({"params": {**params, "optimizer": "LAMB"}})
    with pytest.raises(ConfigError, match=r"^params\.weight_decay must be a number >= 0, got -1"):
        summary.describe({"params": {**params, "weight_decay": -1}})


# ---- the coefficient schedule -----------------------------------------------------------


def test_coefficient_is_lambda_times_the_learning_rate_at_each_step():
    params = {"learning_rate": 0.002, "warmup_steps": 10, "decay_type": "PolynomialDecay",
              "decay_params": {"decay_steps": 30, "end_learning_rate": 0.0}, "minimum_learning_rate": 1e-4}
    schedule = weight_decay.LearningRateScaledDecay(0.05, config.learning_rate_schedule(params))
    steps = [0, 1, 9, 10, 11, 25, 39, 40, 41, 1000]
    lr = ref.wrapped(functools.partial(ref.polynomial, initial=0.002, decay_steps=30, end=0.0), steps,
                     warmup=10, floor=1e-4)
    lr[0] = 0.0  # the floor applies after the warmup only
    np.testing.assert_allclose([float(schedule(s)) for s in steps], 0.05 * lr, rtol=1e-6)
    assert float(schedule(0)) == 0.0
    constant = weight_decay.LearningRateScaledDecay(0.01, 0.5)
    assert float(constant(0)) == float(constant(12345)) == pytest.approx(0.005)


def test_coefficient_config_round_trip():
    for learning_rate in (0.5, config.learning_rate_schedule({"learning_rate": 1, "decay_type": "NoamDecay",
                                                               "decay_params": {"model_dim": 4, "warmup_steps": 8}})):
        schedule = weight_decay.LearningRateScaledDecay(0.01, learning_rate)
        restored = tf.keras.optimizers.schedules.deserialize(tf.keras.optimizers.schedules.serialize(schedule))
        assert type(restored) is weight_decay.LearningRateScaledDecay
        assert restored.get_config() == schedule.get_config()
        assert float(restored(7)) == float(schedule(7))


# ---- every optimizer, in process ------------------------------------------------------

WARMUP_PARAMS = {"learning_rate": 0.1, "warmup_steps": 2, "decay_type": "PolynomialDecay",
                 "decay_params": {"decay_steps": 4, "end_learning_rate": 0.0}}


def reference_learning_rate(step: int) -> float:
    """lr(s) of WARMUP_PARAMS written again: 0, 0.05, then 0.1 * (1 - (s - 2) / 4)."""
    return ref.wrapped(functools.partial(ref.polynomial, initial=0.1, decay_steps=4, end=0.0), [step], warmup=2)[0]


def make_variables(rng):
    return [tf.Variable(rng.normal(size=(3, 2)).astype(np.float32), name=name)
            for name in ("dense/kernel", "dense/bias", "layer_norm_3/gamma", "embedding")]


@pytest.mark.parametrize("name,kwargs", [
    ("Adam", {}), ("LazyAdam", {}), ("SGD", {}), ("SGD", {"momentum": 0.9}), ("RMSprop", {}),
    ("Adagrad", {}), ("Adamax", {}), ("Adadelta", {}), ("AdamW", {}), ("SGDW", {"momentum": 0.5}),
])
@pytest.mark.parametrize("loss_scale", [False, True], ids=["plain", "loss_scale"])
def test_any_optimizer_gets_the_decay(name, kwargs, loss_scale):
    """The optimizer's own update does not depend on w, so with the same gradients the decayed
    weights w and the stock optimizer's weights p satisfy, at every update s,
    ``w' - p' = (w - p) - lr(s) * lambda * w`` for the decayed weights and ``w' = p'`` for the
    excluded ones; lr(s) from the numpy formula. ``loss_scale`` wraps both in the
    LossScaleOptimizer that OpenNMT-tf uses for mixed precision."""
    lam = 0.5
    rng = np.random.default_rng(0)
    schedule = config.learning_rate_schedule({"optimizer": name, **WARMUP_PARAMS})
    settings = config.weight_decay({"optimizer": name, "weight_decay": lam, **WARMUP_PARAMS})
    decayed = weight_decay.make_optimizer(name, schedule, settings, **kwargs)
    stock_kwargs = {"weight_decay": 0.0, **kwargs} if name in ("AdamW", "SGDW") else kwargs
    stock = get_optimizer_class(name)(learning_rate=schedule, **stock_kwargs)
    if loss_scale:
        decayed = tf.keras.mixed_precision.LossScaleOptimizer(decayed)
        stock = tf.keras.mixed_precision.LossScaleOptimizer(stock)
    ours, theirs = make_variables(rng), make_variables(rng)
    for a, b in zip(ours, theirs):
        b.assign(a)
    excluded = [False, True, True, False]
    for step in range(6):
        gradients = [rng.normal(size=(3, 2)).astype(np.float32) for _ in ours]
        before = [v.numpy().astype(np.float64) for v in ours]
        gap = [a.numpy().astype(np.float64) - b.numpy() for a, b in zip(ours, theirs)]
        decayed.apply_gradients(zip([tf.constant(g) for g in gradients], ours))
        stock.apply_gradients(zip([tf.constant(g) for g in gradients], theirs))
        c = lam * reference_learning_rate(step)
        for index, (a, b) in enumerate(zip(ours, theirs)):
            expected = gap[index] if excluded[index] else gap[index] - c * before[index]
            np.testing.assert_allclose(a.numpy() - b.numpy(), expected, atol=2e-6,
                                       err_msg=f"{name} step {step} {a.name}")
    assert decayed.iterations.numpy() == 6
    assert not np.allclose(ours[0].numpy(), theirs[0].numpy(), atol=1e-3)  # the decay did act
    assert weight_decay.effective_weight_decay(decayed, 3) == pytest.approx(lam * reference_learning_rate(3))


REFUSED = {
    "LAMB": "LAMB reads a weight_decay of its own (TensorFlow Addons adds weight_decay * w to its update",
    "NovoGrad": "NovoGrad reads a weight_decay of its own (TensorFlow Addons adds weight_decay * w to the "
                "normalised gradient",
    "AdaBelief": "TensorFlow Addons' AdaBelief cannot be extended with decoupled weight decay",
    "Yogi": "TensorFlow Addons' Yogi cannot be extended with decoupled weight decay (its update takes no "
            "apply_state); it regularises with optimizer_params.l2_regularization_strength",
    "Ftrl": "Ftrl computes each weight from its accumulators, so a decay applied to the weight before its "
            "step is almost entirely undone",
}


def optimizers_opennmt_builds() -> list[str]:
    """Every name that ``opennmt.optimizers.make_optimizer(name, 0.1)`` turns into an optimizer
    (with ``weight_decay=0.0`` for those that require it), found in the modules it searches."""
    import tensorflow_addons as tfa
    from opennmt.optimizers.utils import tf_optimizers
    from tensorflow_addons.optimizers import DecoupledWeightDecayExtension

    names = []
    for module in (tf_optimizers, tfa.optimizers):
        for name, cls in sorted(vars(module).items()):
            if not (isinstance(cls, type) and issubclass(cls, tf_optimizers.Optimizer)) or name in names:
                continue
            extra = {"weight_decay": 0.0} if issubclass(cls, DecoupledWeightDecayExtension) else {}
            try:
                opennmt.optimizers.make_optimizer(name, 0.1, **extra)
            except (TypeError, ValueError):
                continue
            names.append(name)
    return names


BUILDABLE = optimizers_opennmt_builds()


def test_supported_and_refused_optimizers_are_all_that_opennmt_builds():
    assert set(BUILDABLE) == set(config.SCALED_DECAY_OPTIMIZERS) | set(REFUSED)
    assert not set(config.SCALED_DECAY_OPTIMIZERS) & set(REFUSED)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_optimizers_with_their_own_decay_are_refused(name):
    with pytest.raises(ConfigError) as error:
        config.weight_decay({"optimizer": name, "weight_decay": 0.01})
    message = str(error.value)
    assert message.startswith(f"params.weight_decay cannot be combined with params.optimizer {name}: "
                              f"{REFUSED[name]}")
    assert message.endswith("params.weight_decay works with Adadelta, Adagrad, Adam, Adamax, AdamW, "
                            "ConditionalGradient, LazyAdam, Nadam, ProximalAdagrad, RectifiedAdam, RMSprop, "
                            "SGD, SGDW")
    assert "\n" not in message
    # 0 turns the decay off: nothing to refuse.
    assert config.weight_decay({"optimizer": name, "weight_decay": 0}) is None


@pytest.mark.parametrize("name", BUILDABLE)
def test_every_optimizer_opennmt_builds_is_refused_or_decays(name):
    """One update from w with the decay equals the stock optimizer's update from (1 - c) w,
    c = lambda * lr (w for the excluded weights): the decay comes before the optimizer's own
    step, whatever that step does with w."""
    params = {"optimizer": name, "learning_rate": 0.1, "weight_decay": 0.5}
    if name in REFUSED:
        with pytest.raises(ConfigError, match=f"params.optimizer {name}: "):
            config.weight_decay(params)
        return
    settings = config.weight_decay(params)
    decayed = weight_decay.make_optimizer(name, 0.1, settings)
    stock_kwargs = {"weight_decay": 0.0} if name in ("AdamW", "SGDW") else {}
    stock = get_optimizer_class(name)(learning_rate=0.1, **stock_kwargs)
    rng = np.random.default_rng(1)
    ours, theirs = make_variables(rng), make_variables(rng)
    excluded = [False, True, True, False]
    c = 0.5 * 0.1
    for a, b, out in zip(ours, theirs, excluded):
        b.assign(a.numpy() if out else (1 - c) * a.numpy().astype(np.float64))
    gradients = [tf.constant(rng.normal(size=(3, 2)).astype(np.float32)) for _ in ours]
    before = [v.numpy() for v in ours]
    decayed.apply_gradients(zip(gradients, ours))
    stock.apply_gradients(zip(gradients, theirs))
    for a, b, start in zip(ours, theirs, before):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=f"{name} {a.name}")
        assert not np.array_equal(a.numpy(), start)


def test_effective_weight_decay_of_other_optimizers():
    assert weight_decay.effective_weight_decay(tf.keras.optimizers.legacy.Adam(), 10) is None
    absolute = opennmt.optimizers.make_optimizer("Adam", 0.1, weight_decay=0.01)
    assert weight_decay.effective_weight_decay(absolute, 10) == pytest.approx(0.01)


MIRRORED = """
import numpy as np
import tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
from onmt_trainkit import weight_decay
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    kernel = tf.Variable([1.0, 2.0], name="dense/kernel")
    bias = tf.Variable([1.0, 2.0], name="dense/bias")
    optimizer = weight_decay.make_optimizer("SGD", 0.1, weight_decay.WeightDecay(2.0, ("/bias:0$",), True))
@tf.function
def step():
    strategy.run(lambda: optimizer.apply_gradients([(tf.zeros(2), kernel), (tf.zeros(2), bias)]))
step()
print([v.numpy().tolist() for v in kernel.values], [v.numpy().tolist() for v in bias.values])
"""


def test_exclusion_by_name_on_every_replica_of_a_mirrored_strategy(tmp_path):
    """TensorFlow Addons compares variable references, which miss the replicas' copies
    (``dense/kernel/replica_1:0``), and with exclusion patterns it decays nothing there."""
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    output = run([sys.executable, str(script)]).stdout.strip()
    # kernel: w -= 0.1 * 2.0 * w on both replicas; bias (anchored pattern) untouched on both.
    assert output == "[[0.800000011920929, 1.600000023841858], [0.800000011920929, 1.600000023841858]] " \
                     "[[1.0, 2.0], [1.0, 2.0]]"


# ---- a real onmt-main run against numpy --------------------------------------------------

LAMBDA = 2.0  # large, so that the decay moves the weights far beyond the tolerance
MAX_STEP = 6
# Keras's betas; epsilon 1e-3 rather than 1e-7, so that the weights whose gradient is 0 in exact
# arithmetic but float noise in practice (the attention keys' biases: a softmax ignores them)
# do not turn that noise into full-size Adam steps that no two computations agree on.
BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-3
RUN_PARAMS = {"optimizer": "Adam", "optimizer_params": {"epsilon": EPSILON}, "learning_rate": 0.01, "warmup_steps": 2, "decay_type": "PolynomialDecay",
              "decay_params": {"decay_steps": "max_step", "end_learning_rate": 0.0},
              "weight_decay": LAMBDA, "weight_decay_exclude": ["bias", "layer_norm", "no_such_weight"]}


def run_learning_rate(step: int) -> float:
    """lr(s): warmup 0 -> 0.01 over 2 steps, then linear to 0 over the remaining 4."""
    return ref.wrapped(functools.partial(ref.polynomial, initial=0.01, decay_steps=4, end=0.0), [step], warmup=2)[0]


@pytest.fixture(scope="module")
def decayed_run(tmp_path_factory, corpus, model_file):
    root = tmp_path_factory.mktemp("weight_decay")
    run_config = {
        "model_dir": str(root / "run"),
        "data": data_config(corpus, single_example=True),
        "params": RUN_PARAMS,
        "train": {"batch_size": 1, "batch_type": "examples", "effective_batch_size": 2, "max_step": MAX_STEP,
                  "save_checkpoints_steps": 1, "keep_checkpoint_max": 100, "save_summary_steps": 1},
    }
    path = write_yaml(root / "config.yml", run_config)
    process = onmt_main("--model", model_file, "--config", path, "--seed", "1", "train")
    return {"root": root, "config": path, "model_dir": run_config["model_dir"], "log": process.stderr}


class GradientOracle:
    """The gradient that OpenNMT-tf's trainer applies, computed by TensorFlow on given weights:
    the model rebuilt from the model file, the same single training example, the summed loss
    divided by the sample size (dropout is 0, so it is deterministic)."""

    def __init__(self, model_file: str, corpus: dict, saved_keys: set[str]):
        data = data_config(corpus, single_example=True)
        self.model = opennmt.config.load_model_from_file(model_file)
        self.model.initialize(data, params=dict(RUN_PARAMS))
        dataset = self.model.examples_inputter.make_training_dataset(
            data["train_features_file"], data["train_labels_file"], batch_size=1)
        self.features, self.labels = self.model.split_features_labels(next(iter(dataset)))
        self.model.create_variables()
        mapping = opennmt.utils.misc.get_variables_name_mapping(self.model, "model")
        by_ref = {v.ref(): key for key, v in mapping.items() if key in saved_keys}
        self.keys = [by_ref[v.ref()] for v in self.model.trainable_variables]
        self.names = {by_ref[v.ref()]: v.name for v in self.model.trainable_variables}

    def __call__(self, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for key, variable in zip(self.keys, self.model.trainable_variables):
            variable.assign(weights[key].astype(np.float32))
        with tf.GradientTape() as tape:
            loss, sample_size = self.model.compute_training_loss(self.features, self.labels)
        gradients = tape.gradient(loss, self.model.trainable_variables)
        return {key: tf.convert_to_tensor(g).numpy().astype(np.float64) / float(sample_size)
                for key, g in zip(self.keys, gradients)}


def adam_trajectory(oracle, start, excluded, decay_step_offset=0):
    """Adam (Kingma & Ba, with Keras's epsilon outside the square root) with decoupled decay,
    in float64: at update s (t = s + 1),

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        w = w - lr(s) * lambda * w - lr(s) sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

    excluded weights without the decay term. Returns the weights after each update.
    ``decay_step_offset`` evaluates the decay's learning rate at s + offset instead (a wrong
    variant, to show the test tells them apart)."""
    w = {k: v.astype(np.float64) for k, v in start.items()}
    m = {k: np.zeros_like(v) for k, v in w.items()}
    v2 = {k: np.zeros_like(v) for k, v in w.items()}
    trajectory = []
    for s in range(MAX_STEP):
        g = oracle(w)
        lr, t = run_learning_rate(s), s + 1
        decay = LAMBDA * run_learning_rate(s + decay_step_offset)
        alpha = lr * np.sqrt(1 - BETA_2**t) / (1 - BETA_1**t)
        for k in w:
            m[k] = BETA_1 * m[k] + (1 - BETA_1) * g[k]
            v2[k] = BETA_2 * v2[k] + (1 - BETA_2) * g[k] ** 2
            shrink = 0.0 if excluded[k] else decay * w[k]
            w[k] = w[k] - shrink - alpha * m[k] / (np.sqrt(v2[k]) + EPSILON)
        trajectory.append({k: value.copy() for k, value in w.items()})
    return trajectory


def checkpoint(model_dir: str, step: int, keys) -> dict[str, np.ndarray]:
    reader = CheckpointReader(f"{model_dir}/ckpt-{step}")
    return {k: reader.array(k).copy() for k in keys}


def test_saved_weights_follow_adam_with_learning_rate_scaled_decay(decayed_run, model_file, corpus):
    """A real ``onmt-main train`` of 6 updates (Adam, warmup 2 then linear decay,
    ``params.weight_decay: 2``, single example, two accumulated batches per update) saves every
    update; its weights are those of Adam with decoupled decay written in numpy.

    The numpy trajectory is independent of the run's optimizer: it starts from the weights
    before training (ckpt-1: lr(0) = 0, so the first update changes nothing; that the decay
    also waits is part of what is checked) with zero moments, and gets from TensorFlow only
    the gradient of the loss at the numpy trajectory's own weights. Excluded weights (biases,
    layer norms) follow Adam without decay. The wrong variants (decay everywhere, or decay
    with the learning rate of the next step) are shown not to match."""
    saved_keys = set(CheckpointReader(f"{decayed_run['model_dir']}/ckpt-1").entries)
    oracle = GradientOracle(model_file, corpus, saved_keys)
    excluded = {k: bool(re.search("bias|layer_norm", oracle.names[k])) for k in oracle.keys}
    assert sum(excluded.values()) == 31 and len(excluded) == 50  # 17 biases, 7 layer norms x 2
    start = checkpoint(decayed_run["model_dir"], 1, oracle.keys)
    trajectory = adam_trajectory(oracle, start, excluded)
    for step in range(1, MAX_STEP + 1):
        saved = checkpoint(decayed_run["model_dir"], step, oracle.keys)
        for key in oracle.keys:
            np.testing.assert_allclose(saved[key], trajectory[step - 1][key], rtol=1e-5, atol=1e-6,
                                       err_msg=f"step {step}: {oracle.names[key]}")
    final = checkpoint(decayed_run["model_dir"], MAX_STEP, oracle.keys)

    def distance(other):
        return max(np.max(np.abs(final[k] - other[-1][k])) for k in oracle.keys)

    # Each wrong variant misses the saved weights by over 1000 times the tolerance.
    assert distance(adam_trajectory(oracle, start, dict.fromkeys(excluded, False))) > 1e-3
    assert distance(adam_trajectory(oracle, start, excluded, decay_step_offset=1)) > 1e-3
    assert distance(adam_trajectory(oracle, start, dict.fromkeys(excluded, True))) > 1e-3


def test_checkpoints_hold_what_adam_without_decay_holds(decayed_run):
    reader = CheckpointReader(f"{decayed_run['model_dir']}/ckpt-{MAX_STEP}")
    assert sorted(k.split("/.ATTRIBUTES")[0] for k in reader.entries if not k.startswith("model/")) == [
        "_CHECKPOINTABLE_OBJECT_GRAPH", "optimizer/beta_1", "optimizer/beta_2", "optimizer/decay",
        "optimizer/iter", "save_counter"]
    slots = {k.split("/.OPTIMIZER_SLOT/optimizer/")[1].split("/")[0] for k in reader.entries if ".OPTIMIZER_SLOT" in k}
    assert slots == {"m", "v"}


def test_training_log_reports_what_decays(decayed_run):
    log = decayed_run["log"]
    assert re.search(r"Weight decay: w -= lr\(s\) \* 2 \* w at every update for 19 of 50 weights; left out by "
                     r"params\.weight_decay_exclude: 'bias': 17, 'layer_norm': 14, 'no_such_weight': 0", log)
    assert re.search(r"params\.weight_decay_exclude: the pattern 'no_such_weight' matches no weight of the model, "
                     r"so it leaves nothing out \(weights are named like '\S+embedding:0'\)", log)
    assert log.count("matches no weight") == 1
    # attributed to the plugin's module, not to TensorFlow's control flow where it is traced
    assert re.search(r"weight_decay\.py:\d+\] Weight decay: ", log)
    assert re.search(r"weight_decay\.py:\d+\] params\.weight_decay_exclude: the pattern", log)


def test_tensorboard_has_the_weight_decay_beside_the_learning_rate(decayed_run):
    decays = tensorboard_scalars(decayed_run["model_dir"], "optim/weight_decay")
    rates = tensorboard_scalars(decayed_run["model_dir"], "optim/learning_rate")
    assert sorted(decays) == sorted(rates) == list(range(1, MAX_STEP + 1))
    for step in decays:  # logged at step N: the coefficient of the next update, lr(N) * lambda
        assert decays[step] == pytest.approx(LAMBDA * run_learning_rate(step), rel=1e-6, abs=1e-9)
    assert decays[2] == pytest.approx(0.02) and decays[MAX_STEP] == 0.0


def test_plot_tool_gives_the_weight_decay_training_logs(decayed_run, tmp_path):
    """The run's curve beside an unscaled ``optimizer_params.weight_decay`` (the decay panel on
    a log scale: peaks 0.02 and 1e-5)."""
    csv_path = tmp_path / "wd.csv"
    absolute = write_yaml(tmp_path / "absolute.yml", {"params": {"optimizer": "AdamW", "learning_rate": 0.01,
                                                                  "optimizer_params": {"weight_decay": 1e-5}}})
    in_process(plot_schedule_main, "--config", decayed_run["config"], "--config", absolute, "--weight_decay",
               "--csv", str(csv_path), "--output", str(tmp_path / "wd.png"), "--max_step", str(MAX_STEP))
    with open(csv_path, newline="") as rows:
        table = list(csv.reader(rows))
    assert table[0] == ["step", "config", "config weight_decay", "absolute", "absolute weight_decay"]
    assert [float(r[2]) for r in table[1:]] == pytest.approx(
        [LAMBDA * run_learning_rate(s) for s in range(MAX_STEP + 1)], rel=1e-6, abs=1e-9)
    assert [float(r[4]) for r in table[1:]] == [1e-5] * (MAX_STEP + 1)
    logged = tensorboard_scalars(decayed_run["model_dir"], "optim/weight_decay")
    for step, value in logged.items():
        assert float(table[step + 1][2]) == pytest.approx(value, rel=1e-6, abs=1e-9)
    assert (tmp_path / "wd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_tool_refuses_both_keys_and_writes_nothing(tmp_path):
    both = write_yaml(tmp_path / "both.yml", {"params": {"optimizer": "AdamW", "learning_rate": 0.01, "weight_decay": 0.01,
                                                         "optimizer_params": {"weight_decay": 0.01}}})
    process = in_process(plot_schedule_main, "--config", both, "--max_step", "10", "--csv", str(tmp_path / "x.csv"),
                         "--output", str(tmp_path / "x.png"), check=False)
    assert process.returncode == 2
    assert process.stderr.startswith("onmt-trainkit-plot: error: params.weight_decay (0.01) and "
                                     "optimizer_params.weight_decay (0.01) are both set; keep one")
    assert len(process.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.png").exists()


def test_training_refuses_both_keys(tmp_path, corpus, model_file):
    config_path = write_yaml(tmp_path / "both.yml", {
        "model_dir": str(tmp_path / "run"), "data": data_config(corpus, single_example=True),
        "params": {"optimizer": "AdamW", "learning_rate": 0.01, "weight_decay": 0.01,
                   "optimizer_params": {"weight_decay": 0.01}},
        "train": {"batch_size": 1, "batch_type": "examples", "max_step": 2}})
    process = onmt_main("--model", model_file, "--config", config_path, "train", check=False)
    assert_refused(process, "params.weight_decay (0.01) and optimizer_params.weight_decay (0.01) are both set")
    assert not list((tmp_path / "run").glob("ckpt-*"))
