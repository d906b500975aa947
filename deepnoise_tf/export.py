"""The SavedModel: one `serving_default` signature for a single model or an ensemble.

`serving_default(image uint8 [N, H, W, 6], mean float32 [N, 6], std float32 [N, 6])` returns
`probabilities` (softmax over the 1108 siRNAs, control logits dropped), `logits` (all 1139 classes,
no margin) and `embedding` (L2-normalized; for an ensemble the members' unit embeddings concatenated
and scaled by 1/sqrt(members), so it is unit-norm too). Images of another size are resized (area)
to the trained size inside. A `metadata` signature returns the class names, the normalization the
model expects, the input size and the member count, so the export is self-describing: it needs
neither this package nor any custom object to load (`tf.saved_model.load`, `saved_model_cli`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deepnoise_tf import augment, constants


def sirna_class_names(num_sirnas: int = constants.NUM_SIRNAS) -> list[str]:
    """Class i of the probabilities is siRNA id i (the Kaggle `sirna` column)."""
    return [str(index) for index in range(num_sirnas)]


def _ensemble_outputs(networks, images):
    logits, embeddings = [], []
    for backbone, head in networks:
        embedding = tf.cast(backbone(images, training=False), tf.float32)
        logits.append(tf.cast(head(embedding, training=False), tf.float32))
        embeddings.append(tf.math.l2_normalize(embedding, axis=-1))
    mean_logits = tf.add_n(logits) / float(len(logits))  # SPEC 8: average in logit space
    embedding = tf.concat(embeddings, axis=-1) / tf.sqrt(float(len(embeddings)))
    return mean_logits, embedding


def export_saved_model(networks, path: str, *, image_size: int, normalization: str) -> str:
    """Writes the SavedModel of `networks` (a list of (backbone, head), averaged) to `path`."""
    archive = keras.export.ExportArchive()
    for backbone, head in networks:
        archive.track(backbone)
        archive.track(head)
    class_names = sirna_class_names()

    def serve(image, mean, std):
        images = tf.cast(image, tf.float32)
        size = tf.shape(images)[1:3]
        images = tf.cond(
            tf.reduce_all(tf.equal(size, image_size)),
            lambda: images,
            lambda: tf.image.resize(images, (image_size, image_size), method="area"),
        )
        images = tf.ensure_shape(images, (None, image_size, image_size, constants.NUM_CHANNELS))
        normalized = augment.normalize(images, mean, std)
        logits, embedding = _ensemble_outputs(networks, normalized)
        probabilities = tf.nn.softmax(logits[:, : constants.NUM_SIRNAS], axis=-1)
        return {"probabilities": probabilities, "logits": logits, "embedding": embedding}

    archive.add_endpoint(
        "serving_default",
        serve,
        input_signature=[
            tf.TensorSpec((None, None, None, constants.NUM_CHANNELS), tf.uint8, name="image"),
            tf.TensorSpec((None, constants.NUM_CHANNELS), tf.float32, name="mean"),
            tf.TensorSpec((None, constants.NUM_CHANNELS), tf.float32, name="std"),
        ],
    )

    def metadata():
        return {
            "class_names": tf.constant(class_names),
            "normalization": tf.constant(normalization),
            "image_size": tf.constant(image_size, tf.int32),
            "num_models": tf.constant(len(networks), tf.int32),
        }

    archive.add_endpoint("metadata", metadata, input_signature=[])
    archive.write_out(path, verbose=False)
    return path
