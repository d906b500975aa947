"""The training step against a float64 numpy computation of the paper's losses, and the EMA update."""

import math

import keras
import numpy as np
import pytest

from deepnoise_tf import augment, layers
from deepnoise_tf.mean_teacher import VIEW_NAMES, MeanTeacher

SCALE, MARGIN, CLASSES, EMBEDDING, SIZE, CHANNELS = 30.0, 0.1, 5, 8, 4, 6

# Every view is the normalized image itself, so that the numpy references need no augmentation.
PLAIN_VIEWS = {name: (lambda images, seed: images) for name in VIEW_NAMES}


def tiny_network(seed):
    keras.utils.set_random_seed(seed)
    backbone = keras.Sequential(
        [keras.Input((SIZE, SIZE, CHANNELS)), keras.layers.Flatten(), keras.layers.Dense(EMBEDDING)]
    )
    head = layers.ArcFace(CLASSES, scale=SCALE, margin=MARGIN)
    head.build((None, EMBEDDING))
    return {"backbone": backbone, "head": head}


def numpy_cosine(embedding, kernel):
    embedding = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    kernel = kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
    return embedding @ kernel


def numpy_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def numpy_cross_entropy(logits, labels):
    log_probs = np.log(numpy_softmax(logits))
    return -log_probs[np.arange(len(labels)), labels]


def network_weights(network):
    dense_kernel, dense_bias = (w.numpy().astype(np.float64) for w in network["backbone"].weights)
    return dense_kernel, dense_bias, network["head"].kernel.numpy().astype(np.float64)


def make_batch(rng, batch=6):
    return {
        "image": rng.integers(0, 256, (batch, SIZE, SIZE, CHANNELS)).astype(np.uint8),
        "mean": rng.uniform(80, 120, (batch, CHANNELS)).astype(np.float32),
        "std": rng.uniform(30, 60, (batch, CHANNELS)).astype(np.float32),
        "label": np.array([0, 3, -1, 2, -1, -1], np.int32)[:batch],
        "pseudo_label": np.array([-1, -1, 4, -1, 1, -1], np.int32)[:batch],
    }


def build(teacher=True, steps_per_epoch=10, learning_rate=0.05, **kwargs):
    student = tiny_network(1)
    teacher_network = tiny_network(2) if teacher else None
    model = MeanTeacher(
        student,
        teacher_network,
        steps_per_epoch=steps_per_epoch,
        consistency_weight=100.0,
        rampup_epochs=5.0,
        pseudo_label_weight=0.05,
        normalization_jitter=0.0,
        views=PLAIN_VIEWS,
        **kwargs,
    )
    model.compile(optimizer=keras.optimizers.SGD(learning_rate))
    return model


def expected_losses(batch, student, teacher, epoch=0.0, margin=MARGIN, consistency_start=0.0):
    """Float64 numpy of the paper's losses: ArcFace margin CE (eq. 4), consistency MSE (eq. 5), pSoftmax."""
    x = (batch["image"].astype(np.float64) - batch["mean"][:, None, None, :]) / batch["std"][
        :, None, None, :
    ]
    x = x.reshape(len(x), -1)
    labels, pseudo = batch["label"], batch["pseudo_label"]

    w, b, k = student
    cosine = numpy_cosine(x @ w + b, k)
    labelled = labels >= 0
    margin_cos = cosine.copy()
    for row in np.flatnonzero(labelled):
        c = cosine[row, labels[row]]
        if c > math.cos(math.pi - margin):
            margin_cos[row, labels[row]] = c * math.cos(margin) - math.sqrt(1 - c * c) * math.sin(
                margin
            )
        else:
            margin_cos[row, labels[row]] = c - math.sin(math.pi - margin) * margin
    classification = numpy_cross_entropy(SCALE * margin_cos[labelled], labels[labelled]).mean()

    tw, tb, tk = teacher
    student_probs = numpy_softmax(SCALE * cosine)
    teacher_probs = numpy_softmax(SCALE * numpy_cosine(x @ tw + tb, tk))
    consistency = ((student_probs - teacher_probs) ** 2).mean(axis=1).mean()

    has_pseudo = pseudo >= 0
    pseudo_loss = numpy_cross_entropy(SCALE * cosine[has_pseudo], pseudo[has_pseudo]).mean()
    ramp_epoch = epoch - consistency_start
    weight = (
        0.0 if ramp_epoch < 0 else 100.0 * math.exp(-5.0 * (1.0 - min(ramp_epoch, 5.0) / 5.0) ** 2)
    )
    total = 0.95 * classification + 0.05 * pseudo_loss + weight * consistency
    return {
        "classification_loss": classification,
        "consistency_loss": consistency,
        "pseudo_label_loss": pseudo_loss,
        "consistency_weight": weight,
        "loss": total,
    }


def test_one_step_matches_the_spec_losses_computed_in_numpy():
    model = build()
    batch = make_batch(np.random.default_rng(0))
    student = network_weights({"backbone": model.student_backbone, "head": model.student_head})
    teacher = network_weights({"backbone": model.teacher_backbone, "head": model.teacher_head})
    logs = model.train_on_batch(batch, return_dict=True)
    expected = expected_losses(batch, student, teacher)
    for name, value in expected.items():
        np.testing.assert_allclose(logs[name], value, rtol=2e-4, atol=1e-6, err_msg=name)


def test_supervised_model_uses_only_the_classification_loss():
    model = build(teacher=False)
    batch = make_batch(np.random.default_rng(1))
    student = network_weights({"backbone": model.student_backbone, "head": model.student_head})
    logs = model.train_on_batch(batch, return_dict=True)
    expected = expected_losses(batch, student, student)
    np.testing.assert_allclose(logs["loss"], expected["classification_loss"], rtol=2e-4)
    assert logs["consistency_loss"] == 0.0 and logs["pseudo_label_loss"] == 0.0


@pytest.mark.parametrize("iteration, margin", [(0, 0.0), (20, 0.05), (35, 0.0875), (60, MARGIN)])
def test_margin_warmup_ramps_the_arcface_margin_linearly(iteration, margin):
    """4 warm-up epochs of 10 steps: epoch = iteration / 10, margin = 0.1 * min(epoch / 4, 1)."""
    model = build(teacher=False, margin_warmup_epochs=4.0)
    model.optimizer.build(model.student_variables)
    model.optimizer.iterations.assign(iteration)
    batch = make_batch(np.random.default_rng(4))
    student = network_weights({"backbone": model.student_backbone, "head": model.student_head})
    logs = model.train_on_batch(batch, return_dict=True)
    expected = expected_losses(batch, student, student, margin=margin)["classification_loss"]
    np.testing.assert_allclose(logs["classification_loss"], expected, rtol=2e-4)
    if margin != MARGIN:  # the ramp is not the full margin: the losses differ measurably
        full = expected_losses(batch, student, student)["classification_loss"]
        assert abs(full - expected) > 1e-3


@pytest.mark.parametrize("iteration", [0, 29, 30, 42, 90])
def test_consistency_starts_after_the_labelled_only_epochs(iteration):
    """3 labelled-only epochs of 10 steps: weight 0 up to step 29, then the 5-epoch ramp from 0."""
    model = build(consistency_start_epoch=3.0)
    model.optimizer.build(model.student_variables)
    model.optimizer.iterations.assign(iteration)
    batch = make_batch(np.random.default_rng(5))
    student = network_weights({"backbone": model.student_backbone, "head": model.student_head})
    teacher = network_weights({"backbone": model.teacher_backbone, "head": model.teacher_head})
    logs = model.train_on_batch(batch, return_dict=True)
    expected = expected_losses(batch, student, teacher, epoch=iteration / 10, consistency_start=3.0)
    assert (logs["consistency_weight"] == 0.0) == (iteration < 30)  # exactly 0, not exp(-5) * 100
    for name in ("consistency_weight", "loss"):
        np.testing.assert_allclose(logs[name], expected[name], rtol=2e-4, atol=1e-6, err_msg=name)


def test_consistency_start_must_not_be_negative():
    with pytest.raises(ValueError, match="consistency_start_epoch"):
        MeanTeacher(
            tiny_network(1), tiny_network(2), steps_per_epoch=10, consistency_start_epoch=-1.0
        )


def test_views_default_to_the_papers_and_must_name_all_three():
    assert MeanTeacher(tiny_network(1), steps_per_epoch=10).views == augment.VIEWS
    with pytest.raises(ValueError, match="views must name exactly"):
        MeanTeacher(tiny_network(1), steps_per_epoch=10, views={"normal": PLAIN_VIEWS["normal"]})


def test_margin_warmup_needs_a_margin_head_and_a_non_negative_length():
    student = tiny_network(1)
    with pytest.raises(ValueError, match="margin_warmup_epochs"):
        MeanTeacher(student, steps_per_epoch=10, margin_warmup_epochs=-1.0)
    softmax = {"backbone": student["backbone"], "head": layers.SoftmaxHead(CLASSES)}
    with pytest.raises(ValueError, match="ArcFace"):
        MeanTeacher(softmax, steps_per_epoch=10, margin_warmup_epochs=2.0)


def test_teacher_is_the_ema_of_the_student_and_never_optimised():
    model = build(learning_rate=0.5)
    rng = np.random.default_rng(2)
    optimised = {id(v) for v in model.optimizer.variables} | {
        id(v) for v in model.optimizer._trainable_variables
    }
    assert not any(id(v) in optimised for v in model.teacher_variables)
    teacher = [v.numpy().copy() for v in model.teacher_variables]
    # Step 1: decay = min(1 - 1/(1+1), 0.5) = 0.5 (epoch 1 of the EMA decay schedule).
    model.train_on_batch(make_batch(rng), return_dict=True)
    student = [v.numpy() for v in model.student_variables]
    for new, old, s in zip(model.teacher_variables, teacher, student, strict=True):
        np.testing.assert_allclose(new.numpy(), 0.5 * old + 0.5 * s, rtol=1e-5, atol=1e-6)
    # Step 2: decay = min(1 - 1/3, 0.5) = 0.5 again; step 3 would be min(0.75, 0.5).
    teacher = [v.numpy().copy() for v in model.teacher_variables]
    model.train_on_batch(make_batch(rng), return_dict=True)
    student = [v.numpy() for v in model.student_variables]
    for new, old, s in zip(model.teacher_variables, teacher, student, strict=True):
        np.testing.assert_allclose(new.numpy(), 0.5 * old + 0.5 * s, rtol=1e-5, atol=1e-6)


def test_ema_decay_follows_the_epoch_schedule_in_the_step():
    # steps_per_epoch=1: step k runs in epoch k (1-based) -> decays 0.5, 0.9 (epoch 2 <= 10).
    model = build(steps_per_epoch=1, learning_rate=0.5)
    rng = np.random.default_rng(3)
    model.train_on_batch(make_batch(rng), return_dict=True)
    teacher = [v.numpy().copy() for v in model.teacher_variables]
    for _ in range(1):
        model.train_on_batch(make_batch(rng), return_dict=True)
    decay = min(1 - 1 / 3, 0.9)  # step 2, epoch 2
    student = [v.numpy() for v in model.student_variables]
    for new, old, s in zip(model.teacher_variables, teacher, student, strict=True):
        np.testing.assert_allclose(new.numpy(), decay * old + (1 - decay) * s, rtol=1e-5, atol=1e-6)


def test_test_step_reports_student_and_teacher_accuracy():
    model = build()
    batch = make_batch(np.random.default_rng(4))
    logs = model.test_on_batch(batch, return_dict=True)
    x = (batch["image"].astype(np.float64) - batch["mean"][:, None, None, :]) / batch["std"][
        :, None, None, :
    ]
    x = x.reshape(len(x), -1)
    labelled = batch["label"] >= 0
    for name, network in [
        ("student_accuracy", {"backbone": model.student_backbone, "head": model.student_head}),
        ("teacher_accuracy", {"backbone": model.teacher_backbone, "head": model.teacher_head}),
    ]:
        w, b, k = network_weights(network)
        predicted = numpy_cosine(x @ w + b, k).argmax(axis=1)
        expected = (predicted[labelled] == batch["label"][labelled]).mean()
        assert logs[name] == pytest.approx(expected)


def bn_network(seed):
    keras.utils.set_random_seed(seed)
    backbone = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, CHANNELS)),
            keras.layers.Flatten(),
            keras.layers.Dense(EMBEDDING),
            keras.layers.BatchNormalization(momentum=0.5),
        ]
    )
    head = layers.ArcFace(CLASSES, scale=SCALE, margin=MARGIN)
    head.build((None, EMBEDDING))
    return {"backbone": backbone, "head": head}


@pytest.mark.parametrize("statistics", ["ema", "batch"])
def test_teacher_batch_norm_statistics(statistics):
    """ "ema": teacher statistics = EMA of the student's (teacher in inference mode); "batch": its own."""
    student, teacher = bn_network(1), bn_network(2)
    model = MeanTeacher(
        student,
        teacher,
        steps_per_epoch=10,
        normalization_jitter=0.0,
        views=PLAIN_VIEWS,
        teacher_statistics=statistics,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    model.copy_student_to_teacher()
    old_teacher = [w.numpy().copy() for w in model.teacher_backbone.non_trainable_weights]
    dense_kernel, dense_bias = (
        w.numpy().astype(np.float64) for w in model.teacher_backbone.layers[1].weights
    )
    batch = make_batch(np.random.default_rng(5))
    model.train_on_batch(batch, return_dict=True)
    new_teacher = [w.numpy() for w in model.teacher_backbone.non_trainable_weights]
    new_student = [w.numpy() for w in model.student_backbone.non_trainable_weights]
    # The student's statistics moved (its forward pass is in training mode).
    assert not np.allclose(new_student[0], old_teacher[0])
    if statistics == "ema":  # step 1: decay 0.5
        for new, old, s in zip(new_teacher, old_teacher, new_student, strict=True):
            np.testing.assert_allclose(new, 0.5 * old + 0.5 * s, rtol=1e-5, atol=1e-6)
    else:  # momentum 0.5 towards the teacher's own batch of embeddings (unaugmented: same images)
        x = (batch["image"].astype(np.float64) - batch["mean"][:, None, None, :]) / batch["std"][
            :, None, None, :
        ]
        embedding = x.reshape(len(x), -1) @ dense_kernel + dense_bias
        np.testing.assert_allclose(
            new_teacher[0], 0.5 * old_teacher[0] + 0.5 * embedding.mean(0), rtol=1e-3, atol=1e-4
        )
