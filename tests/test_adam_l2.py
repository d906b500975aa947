"""The paper's pretraining optimizer: Adam on `gradient + l2 * w` (PyTorch's `Adam(weight_decay)`,
the authors' code), checked step by step against a numpy transcription, and wired as the default."""

import keras
import numpy as np
import pytest
from conftest import tiny_config

from deepnoise_tf import config as config_lib
from deepnoise_tf import factory, optimizers

L2 = 0.05  # large, so the L2 term is far from negligible next to the gradient


def numpy_adam_l2(params, gradients, l2, *, lr, steps, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Keras's Adam formula (epsilon added to sqrt(v), bias correction folded into the step size)
    on `gradient + l2[name] * w`: the L2 term PyTorch's Adam(weight_decay) adds before the moments.

    `params`: {name: array}; `gradients(params)`: {name: loss gradient}; `l2`: {name: coefficient}.
    """
    params = {name: np.array(value, np.float64) for name, value in params.items()}
    moments = {name: (np.zeros_like(p), np.zeros_like(p)) for name, p in params.items()}
    for t in range(1, steps + 1):
        loss_gradients = gradients(params)
        for name, p in params.items():
            g = loss_gradients[name] + l2[name] * p
            m, v = moments[name]
            m, v = beta_1 * m + (1 - beta_1) * g, beta_2 * v + (1 - beta_2) * g * g
            moments[name] = (m, v)
            alpha = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
            params[name] = p - alpha * m / (np.sqrt(v) + epsilon)
    return params


def test_fit_steps_match_numpy_with_l2_on_the_kernel_and_none_on_the_bias():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3))
    y = rng.normal(size=(8, 2))
    start = {"kernel": rng.normal(size=(3, 2)), "bias": np.ones(2)}
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense")])
    model.layers[0].set_weights(
        [start["kernel"].astype("float32"), start["bias"].astype("float32")]
    )
    optimizer = optimizers.AdamL2(learning_rate=0.1, l2=L2)
    optimizer.exclude_from_weight_decay(var_names=list(optimizers.L2_EXCLUDED_NAMES))
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x.astype("float32"), y.astype("float32"), batch_size=8, epochs=3, verbose=0)

    def gradients(params):  # of mean((x W + b - y)^2) over every entry
        residual = 2 * (x @ params["kernel"] + params["bias"] - y) / y.size
        return {"kernel": x.T @ residual, "bias": residual.sum(0)}

    expected = numpy_adam_l2(start, gradients, {"kernel": L2, "bias": 0.0}, lr=0.1, steps=3)
    kernel, bias = model.layers[0].get_weights()
    np.testing.assert_allclose(kernel, expected["kernel"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, expected["bias"], rtol=1e-5, atol=1e-6)
    # The L2 term matters here: without it (plain Adam) the kernel ends elsewhere.
    plain = numpy_adam_l2(start, gradients, {"kernel": 0.0, "bias": 0.0}, lr=0.1, steps=3)
    assert np.abs(plain["kernel"] - expected["kernel"]).max() > 1e-3


def test_a_weight_without_loss_gradient_moves_by_the_l2_term_through_adam():
    """grad + l2 * w, not w - lr * l2 * w (AdamW): Adam's first step is ~lr * sign(w), whatever l2
    (while epsilon is small next to l2 * |w|), and later steps follow the transcription."""
    start = np.array([0.5, -2.0, 3.0], np.float32)
    zero = lambda params: {"w": np.zeros(3)}  # noqa: E731
    for l2, steps in ((0.5, 1), (2e-4, 4)):
        variable = keras.Variable(start, name="kernel")
        optimizer = optimizers.AdamL2(learning_rate=0.01, l2=l2)
        for _ in range(steps):
            optimizer.apply([np.zeros(3, np.float32)], [variable])
        expected = numpy_adam_l2({"w": start}, zero, {"w": l2}, lr=0.01, steps=steps)["w"]
        np.testing.assert_allclose(np.asarray(variable), expected, rtol=1e-6)
        if l2 == 0.5:
            np.testing.assert_allclose(expected, start - 0.01 * np.sign(start), rtol=1e-6)
            # AdamW's decoupled decay would have moved each weight by lr * l2 * w instead.
            assert np.abs(start * (1 - 0.01 * l2) - expected).max() > 1e-3


def test_adam_l2_refuses_decoupled_decay_and_round_trips_its_config():
    with pytest.raises(ValueError, match="decoupled"):
        optimizers.AdamL2(1e-3, l2=2e-4, weight_decay=1e-4)
    with pytest.raises(ValueError, match="l2"):
        optimizers.AdamL2(1e-3, l2=-1.0)
    restored = optimizers.AdamL2.from_config(optimizers.AdamL2(1e-3, l2=2e-4).get_config())
    assert restored.l2 == pytest.approx(2e-4) and restored.weight_decay is None


def test_paper_and_cpu_defaults_build_adam_with_l2_on_kernels_only(tiny_data):
    assert config_lib.default_config().train.optimizer == "adam_l2"
    config = tiny_config(*tiny_data, **{"model.width": 0.0625})
    assert config.train.optimizer == "adam_l2"  # CPU scale keeps the paper's optimizer
    model = factory.build_model(config, steps_per_epoch=2)
    optimizer = model.optimizer
    assert isinstance(optimizer, optimizers.AdamL2)
    assert optimizer.l2 == pytest.approx(2e-4) and optimizer.weight_decay is None
    kinds = {}
    for variable in model.student_variables:
        kinds.setdefault(optimizer._use_weight_decay(variable), set()).add(variable.name)
    assert kinds[True] == {"kernel", "depthwise_kernel", "pointwise_kernel"}  # ArcFace W: kernel
    assert kinds[False] == {"gamma", "beta"}


def test_the_mean_teacher_step_gets_the_l2_term():
    """`MeanTeacher.train_step` calls `optimizer.apply` like `fit`: with an L2 coefficient that
    dwarfs the loss gradient, Adam's first step moves every decayed student weight by ~lr against
    its sign, and the undecayed bias exactly as without L2; the teacher only follows by EMA."""
    from deepnoise_tf import layers
    from deepnoise_tf.mean_teacher import VIEW_NAMES, MeanTeacher

    def network(seed):
        keras.utils.set_random_seed(seed)
        backbone = keras.Sequential(
            [keras.Input((4, 4, 6)), keras.layers.Flatten(), keras.layers.Dense(8, name="dense")]
        )
        head = layers.ArcFace(5, scale=30.0, margin=0.1)
        head.build((None, 8))
        return {"backbone": backbone, "head": head}

    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (4, 4, 4, 6)).astype(np.uint8),
        "mean": rng.uniform(80, 120, (4, 6)).astype(np.float32),
        "std": rng.uniform(30, 60, (4, 6)).astype(np.float32),
        "label": np.array([0, 3, -1, 2], np.int32),
    }
    after = {}
    for l2 in (0.0, 1e8):
        model = MeanTeacher(
            network(1),
            network(2),
            steps_per_epoch=10,
            normalization_jitter=0.0,
            views={name: (lambda images, seed: images) for name in VIEW_NAMES},
        )
        optimizer = optimizers.AdamL2(learning_rate=0.01, l2=l2)
        optimizer.exclude_from_weight_decay(var_names=list(optimizers.L2_EXCLUDED_NAMES))
        model.compile(optimizer=optimizer)
        start = [np.asarray(v) for v in model.student_variables]
        model.train_on_batch(batch)
        after[l2] = (start, [np.asarray(v) for v in model.student_variables])
    (start, plain), (_, with_l2) = after[0.0], after[1e8]
    names = [v.name for v in model.student_variables]
    for name, w0, w_plain, w_l2 in zip(names, start, plain, with_l2, strict=True):
        if name == "bias":
            np.testing.assert_allclose(w_l2, w_plain, rtol=1e-6, atol=1e-9)
        else:
            np.testing.assert_allclose(w_l2, w0 - 0.01 * np.sign(w0), rtol=1e-4, atol=1e-6)
            assert np.abs(w_plain - w_l2).max() > 1e-4, name
