"""Which view feeds which loss, with the paper's augmentations and normalization jitter on.

The step's view functions are wrapped to record what they receive and return (eagerly) or to count
their calls (compiled, where a skipped `tf.cond` branch must not run); the losses of the step are
then recomputed in float64 numpy from the recorded views, each loss from the view the paper (and
the authors' code) assigns to it (docs/method.md §3, §5): ArcFace on the normal view of the
labelled rows, consistency between the student's easy view and the teacher's hard view of every
row, pSoftmax on the easy view of the pseudo-labelled rows.
"""

import math
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from deepnoise_tf import augment, data, layers
from deepnoise_tf.mean_teacher import VIEW_NAMES, MeanTeacher, labelled_prefix

SCALE, MARGIN, CLASSES, EMBEDDING, SIZE, CHANNELS = 30.0, 0.1, 5, 8, 16, 6
LABELLED = 4  # of 8 rows, first: the layout of data.training_dataset at labelled_share 0.5


class Counter(keras.layers.Layer):
    """Identity that counts its calls and the rows it sees, in variables (counted when compiled).

    The variables sit in a namespace Keras does not track: they are no weights of the network.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.counts = types.SimpleNamespace(calls=tf.Variable(0), rows=tf.Variable(0))

    def call(self, inputs):
        self.counts.calls.assign_add(1)
        self.counts.rows.assign_add(tf.shape(inputs)[0])
        return inputs


def network(seed, batch_norm=False):
    keras.utils.set_random_seed(seed)
    stack = [keras.Input((SIZE, SIZE, CHANNELS)), Counter(), keras.layers.Flatten()]
    stack.append(keras.layers.Dense(EMBEDDING))
    if batch_norm:
        stack.append(keras.layers.BatchNormalization(momentum=0.5))
    head = layers.ArcFace(CLASSES, scale=SCALE, margin=MARGIN)
    head.build((None, EMBEDDING))
    return {"backbone": keras.Sequential(stack), "head": head}


def counter(model, which):
    backbone = getattr(model, f"{which}_backbone")
    return next(layer for layer in backbone.layers if isinstance(layer, Counter)).counts


def make_batch(rng, pseudo=True):
    labels = np.array([0, 3, 2, 4, -1, -1, -1, -1], np.int32)
    return {
        "image": rng.integers(0, 256, (8, SIZE, SIZE, CHANNELS)).astype(np.uint8),
        "mean": rng.uniform(80, 120, (8, CHANNELS)).astype(np.float32),
        "std": rng.uniform(30, 60, (8, CHANNELS)).astype(np.float32),
        "label": labels,
        "pseudo_label": np.array([-1, -1, -1, -1, 1, -1, 3, 0] if pseudo else [-1] * 8, np.int32),
    }


def recording_views(record):
    """The paper's views (augment.VIEWS), each recording (input, output) when run eagerly."""

    def wrap(name):
        def view(images, seed):
            output = augment.VIEWS[name](images, seed)
            record.setdefault(name, []).append((images.numpy(), output.numpy()))
            return output

        return view

    return {name: wrap(name) for name in VIEW_NAMES}


def counting_views(counts):
    """The paper's views, each adding 1 to its counter variable when it runs (compiled too)."""

    def wrap(name):
        def view(images, seed):
            counts[name].assign_add(1)
            return augment.VIEWS[name](images, seed)

        return view

    return {name: wrap(name) for name in VIEW_NAMES}


def build(views, *, run_eagerly=False, batch_norm=False, **kwargs):
    model = MeanTeacher(
        network(1, batch_norm),
        network(2, batch_norm),
        steps_per_epoch=10,
        normalization_jitter=0.1,
        views=views,
        labelled_share=0.5,
        **kwargs,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), run_eagerly=run_eagerly)
    return model


def weights(model, which):
    backbone, head = getattr(model, f"{which}_backbone"), getattr(model, f"{which}_head")
    kernel, bias = (w.numpy().astype(np.float64) for w in backbone.trainable_weights)
    return kernel, bias, head.kernel.numpy().astype(np.float64)


def cosine(images, network_weights):
    kernel, bias, classes = network_weights
    embedding = images.reshape(len(images), -1).astype(np.float64) @ kernel + bias
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    return embedding @ (classes / np.linalg.norm(classes, axis=0, keepdims=True))


def softmax(logits):
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def cross_entropy(logits, labels):
    return -np.log(softmax(logits))[np.arange(len(labels)), labels]


def arcface_loss(cosines, labels):
    margin_cos = cosines.copy()
    for row, label in enumerate(labels):
        c = cosines[row, label]
        margin_cos[row, label] = c * math.cos(MARGIN) - math.sqrt(1 - c * c) * math.sin(MARGIN)
    return cross_entropy(SCALE * margin_cos, labels)


@pytest.fixture(scope="module")
def recorded_step():
    """One eager step of a mixed batch with pseudo labels; the views and the weights it saw."""
    record = {}
    model = build(recording_views(record), run_eagerly=True)
    batch = make_batch(np.random.default_rng(0))
    student, teacher = weights(model, "student"), weights(model, "teacher")
    logs = model.train_on_batch(batch, return_dict=True)
    return {"record": record, "batch": batch, "student": student, "teacher": teacher, "logs": logs}


def test_each_view_is_drawn_once_from_the_same_jittered_normalization(recorded_step):
    record, batch = recorded_step["record"], recorded_step["batch"]
    assert {name: len(calls) for name, calls in record.items()} == {n: 1 for n in VIEW_NAMES}
    (normal_in, _), (easy_in, _), (hard_in, _) = (record[n][0] for n in ("normal", "easy", "hard"))
    # Easy and hard views: every row; normal view: the labelled rows only, the same normalization.
    assert len(easy_in) == len(hard_in) == 8 and len(normal_in) == LABELLED
    np.testing.assert_array_equal(easy_in, hard_in)
    np.testing.assert_array_equal(normal_in, easy_in[:LABELLED])
    # Jitter on: x = z * std' + mean' with mean'/mean and std'/std in [0.9, 1.1], not all 1.
    x = batch["image"].astype(np.float64).reshape(8, -1, CHANNELS)
    z = easy_in.astype(np.float64).reshape(8, -1, CHANNELS)
    std = x.std(axis=1) / z.std(axis=1)  # x is an increasing affine map of z
    mean = x.mean(axis=1) - z.mean(axis=1) * std
    for ratio in (mean / batch["mean"], std / batch["std"]):
        assert np.all(np.abs(ratio - 1) <= 0.1 + 1e-3) and np.abs(ratio - 1).max() > 0.02


def test_the_views_are_perturbed_differently(recorded_step):
    outputs = {name: calls[0][1] for name, calls in recorded_step["record"].items()}
    normalized = recorded_step["record"]["easy"][0][0]
    for name in ("easy", "hard"):
        assert not np.allclose(outputs[name], normalized)
    assert not np.allclose(outputs["easy"], outputs["hard"])
    assert not np.allclose(outputs["normal"], outputs["easy"][:LABELLED])


def expected_losses(recorded_step):
    """Float64 losses from the recorded views, each from the view the paper gives it."""
    outputs = {name: calls[0][1] for name, calls in recorded_step["record"].items()}
    batch, student, teacher = (recorded_step[k] for k in ("batch", "student", "teacher"))
    labels, pseudo = batch["label"], batch["pseudo_label"]
    classification = arcface_loss(cosine(outputs["normal"], student), labels[:LABELLED]).mean()
    easy = SCALE * cosine(outputs["easy"], student)
    hard = SCALE * cosine(outputs["hard"], teacher)
    consistency = ((softmax(easy) - softmax(hard)) ** 2).mean()
    has_pseudo = pseudo >= 0
    pseudo_loss = cross_entropy(easy[has_pseudo], pseudo[has_pseudo]).mean()
    return classification, consistency, pseudo_loss, easy, hard


def test_each_loss_comes_from_its_view(recorded_step):
    classification, consistency, pseudo_loss, _, _ = expected_losses(recorded_step)
    logs = recorded_step["logs"]
    weight = 100.0 * math.exp(-5.0)  # step 0 of the 5-epoch ramp
    assert logs["consistency_weight"] == pytest.approx(weight, rel=1e-5)
    expected = {
        "classification_loss": classification,
        "consistency_loss": consistency,
        "pseudo_label_loss": pseudo_loss,
        "loss": 0.95 * classification + 0.05 * pseudo_loss + weight * consistency,
    }
    for name, value in expected.items():
        np.testing.assert_allclose(logs[name], value, rtol=2e-4, atol=1e-7, err_msg=name)


def test_other_view_assignments_give_other_losses(recorded_step):
    """The check above can fail: the losses from the wrong views differ measurably."""
    _, consistency, pseudo_loss, easy, hard = expected_losses(recorded_step)
    batch, logs = recorded_step["batch"], recorded_step["logs"]
    has_pseudo = batch["pseudo_label"] >= 0
    wrong_pseudo = cross_entropy(hard[has_pseudo], batch["pseudo_label"][has_pseudo]).mean()
    assert abs(wrong_pseudo - logs["pseudo_label_loss"]) > 1e-3
    easy_teacher = SCALE * cosine(
        recorded_step["record"]["easy"][0][1], recorded_step["teacher"]
    )  # teacher on the easy view instead of the hard one
    wrong_consistency = ((softmax(easy) - softmax(easy_teacher)) ** 2).mean()
    assert abs(wrong_consistency - logs["consistency_loss"]) > 1e-3 * consistency
    normal_all_rows = recorded_step["record"]["easy"][0][1]  # any view of every row
    wrong = arcface_loss(
        cosine(normal_all_rows[:LABELLED], recorded_step["student"]), batch["label"][:LABELLED]
    ).mean()
    assert abs(wrong - logs["classification_loss"]) > 1e-3


@pytest.mark.parametrize(
    "iteration, pseudo, runs",
    [
        (0, False, {"normal": 1, "easy": 0, "hard": 0}),  # labelled-only epoch, no pseudo labels
        (0, True, {"normal": 1, "easy": 1, "hard": 0}),  # pseudo labels need the easy view
        (30, False, {"normal": 1, "easy": 1, "hard": 1}),  # consistency weight > 0
    ],
)
def test_passes_run_only_when_their_loss_has_weight(iteration, pseudo, runs):
    """Compiled step, 3 labelled-only epochs of 10 steps: views and backbone passes are counted."""
    counts = {n: tf.Variable(0, trainable=False) for n in VIEW_NAMES}
    model = build(counting_views(counts), consistency_start_epoch=3.0)
    model.optimizer.build(model.student_variables)
    model.optimizer.iterations.assign(iteration)
    teacher_before = [v.numpy().copy() for v in model.teacher_variables]
    logs = model.train_on_batch(make_batch(np.random.default_rng(1), pseudo), return_dict=True)
    assert {name: int(count.numpy()) for name, count in counts.items()} == runs
    student, teacher = counter(model, "student"), counter(model, "teacher")
    assert (
        int(student.calls.numpy()) == 1 + runs["easy"]
        and int(teacher.calls.numpy()) == runs["hard"]
    )
    assert int(student.rows.numpy()) == LABELLED + 8 * runs["easy"]  # normal view: labelled rows
    assert (logs["consistency_loss"] == 0.0) == (runs["hard"] == 0)
    assert (logs["pseudo_label_loss"] > 0) == pseudo
    # The EMA update of the teacher runs whatever passes ran: decay 0.5 in epoch 1, 0.9 in epoch 4.
    decay = min(1 - 1 / (iteration + 2), 0.5 if iteration < 10 else 0.9)
    pairs = zip(model.teacher_variables, teacher_before, model.student_variables, strict=True)
    for new, old, s in pairs:
        expected = decay * old + (1 - decay) * s.numpy()
        np.testing.assert_allclose(new.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("iteration", [0, 30])
def test_batch_mode_teacher_statistics_follow_the_student_only_while_it_runs_no_pass(iteration):
    """ "batch": the teacher's moving statistics are its own; in the labelled-only epochs, where it
    runs no pass, they follow the student's by the EMA (step 1: decay 0.5)."""
    counts = {n: tf.Variable(0, trainable=False) for n in VIEW_NAMES}
    model = build(counting_views(counts), batch_norm=True, consistency_start_epoch=3.0)
    assert model.teacher_statistics == "batch"  # the paper's, by default
    model.copy_student_to_teacher()
    model.optimizer.build(model.student_variables)
    model.optimizer.iterations.assign(iteration)
    before = [w.numpy().copy() for w in model.teacher_backbone.non_trainable_weights]
    model.train_on_batch(make_batch(np.random.default_rng(2), pseudo=False), return_dict=True)
    student = [w.numpy() for w in model.student_backbone.non_trainable_weights]
    teacher = [w.numpy() for w in model.teacher_backbone.non_trainable_weights]
    assert len(teacher) == 2  # moving mean and variance
    averaged = [0.5 * old + 0.5 * new for old, new in zip(before, student, strict=True)]
    if iteration == 0:
        assert int(counts["hard"].numpy()) == 0
        for got, want in zip(teacher, averaged, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    else:  # the teacher ran on the hard view: momentum 0.5 towards its own batch, not the student's
        assert int(counts["hard"].numpy()) == 1
        assert not np.allclose(teacher[0], averaged[0], rtol=1e-3)
        assert not np.allclose(teacher[0], before[0])


def test_a_label_after_the_labelled_prefix_is_an_error():
    model = build({n: augment.VIEWS[n] for n in VIEW_NAMES})
    batch = make_batch(np.random.default_rng(3))
    batch["label"][6] = 2
    with pytest.raises(tf.errors.InvalidArgumentError, match="labelled share"):
        model.train_on_batch(batch, return_dict=True)


@pytest.mark.parametrize("replicas", [1, 2, 4])
@pytest.mark.parametrize("share", [0.25, 0.5, 0.75, 1.0, 0.01])
def test_labelled_prefix_is_the_pipelines_per_replica_count(replicas, share):
    for batch in (8, 16, 32, 64):
        per_replica = data.labelled_batch_size(batch, share, replicas) // replicas
        assert labelled_prefix(batch // replicas, share) == per_replica
