"""The SavedModel: one `serving_default` signature for a single model or an ensemble.

`serving_default(image uint8 [N, H, W, 6], mean float32 [N, 6], std float32 [N, 6])` returns
`probabilities` (softmax over the 1108 siRNAs, control logits dropped), `logits` (all 1139 classes,
no margin) and `embedding` (L2-normalized; for an ensemble the members' unit embeddings concatenated
and scaled by 1/sqrt(members), so it is unit-norm too). Images of another size are resized (area)
to the trained size inside. A `metadata` signature returns the class names, the normalization the
model expects, the input size and the member count, so the export is self-describing: it needs
neither this package nor any custom object to load (`tf.saved_model.load`, `saved_model_cli`).

An export with per-cell-type models (the pipeline's, after fine-tuning; paper, "Fine-tuning": each
cell type is predicted by its own models) adds `serving_by_cell_type(image, mean, std, cell_type
string [N])`: each image runs through its cell type's ensemble, an image of another cell type (or
"") through the general one; `metadata` lists the routed `cell_types`. `serving_default` keeps its
inputs and serves the general ensemble, so clients that know no cell type work unchanged;
`inference.load_export` uses the routed signature when the export has it.
"""

from __future__ import annotations

import pathlib
import shutil

import keras
import tensorflow as tf

from deepnoise_tf import augment, constants

ROUTED_SIGNATURE = "serving_by_cell_type"


def sirna_class_names(num_sirnas: int = constants.NUM_SIRNAS) -> list[str]:
    """Class i of the probabilities is siRNA id i (the Kaggle `sirna` column)."""
    return [str(index) for index in range(num_sirnas)]


def serving_outputs(networks, image, mean, std, *, image_size: int) -> dict:
    """What `serving_default` computes, for exports and in-process models alike.

    uint8 images of another size are resized (area) to `image_size`, normalized with the given
    statistics, and run through every (backbone, head); logits are averaged in logit space (paper,
    "Model ensemble"), unit embeddings concatenated and scaled by 1/sqrt(members).
    """
    images = tf.cast(image, tf.float32)
    size = tf.shape(images)[1:3]
    images = tf.cond(
        tf.reduce_all(tf.equal(size, image_size)),
        lambda: images,
        lambda: tf.image.resize(images, (image_size, image_size), method="area"),
    )
    images = tf.ensure_shape(images, (None, image_size, image_size, constants.NUM_CHANNELS))
    normalized = augment.normalize(images, mean, std)
    logits, embeddings = [], []
    for backbone, head in networks:
        embedding = tf.cast(backbone(normalized, training=False), tf.float32)
        logits.append(tf.cast(head(embedding, training=False), tf.float32))
        embeddings.append(tf.math.l2_normalize(embedding, axis=-1))
    mean_logits = tf.add_n(logits) / float(len(logits))
    embedding = tf.concat(embeddings, axis=-1) / tf.sqrt(float(len(embeddings)))
    probabilities = tf.nn.softmax(mean_logits[:, : constants.NUM_SIRNAS], axis=-1)
    return {"probabilities": probabilities, "logits": mean_logits, "embedding": embedding}


def routed_serving_outputs(networks, routes: dict, image, mean, std, cell_type, *, image_size):
    """`serving_outputs` of each image's cell type's networks (`routes[cell type]`, a list of
    (backbone, head)); images of a cell type without a route go through `networks`. Each image runs
    through one ensemble only (partitioned, then stitched back in order)."""
    if not routes:
        return serving_outputs(networks, image, mean, std, image_size=image_size)
    names = sorted(routes)
    groups = [routes[name] for name in names] + [networks]
    matches = tf.equal(tf.reshape(cell_type, (-1, 1)), tf.constant(names)[tf.newaxis, :])
    first = tf.argmax(tf.cast(matches, tf.int32), axis=1, output_type=tf.int32)
    part = tf.where(tf.reduce_any(matches, axis=1), first, len(names))
    positions = tf.dynamic_partition(tf.range(tf.shape(image)[0]), part, len(groups))
    parts = [tf.dynamic_partition(value, part, len(groups)) for value in (image, mean, std)]
    outputs = [
        _outputs_of_part(group, *(values[index] for values in parts), image_size=image_size)
        for index, group in enumerate(groups)
    ]
    return {key: tf.dynamic_stitch(positions, [out[key] for out in outputs]) for key in outputs[0]}


def _outputs_of_part(networks, image, mean, std, *, image_size) -> dict:
    """`serving_outputs` of one partition, which may hold no image: an empty partition runs one
    zero row and keeps none of its outputs. Networks never see an empty batch, which TensorFlow 2.21's
    CPU kernels (oneDNN) reject inside batch normalization ("Incompatible shapes: [C] vs. [0,H,W,6]")."""
    count = tf.shape(image)[0]
    missing = tf.cast(tf.equal(count, 0), tf.int32)  # 1 for an empty partition, else 0

    def padded(value):
        shape = tf.concat([[missing], tf.shape(value)[1:]], axis=0)
        return tf.concat([value, tf.zeros(shape, value.dtype)], axis=0)

    outputs = serving_outputs(
        networks, padded(image), padded(mean), padded(std), image_size=image_size
    )
    return {key: value[:count] for key, value in outputs.items()}


def _check_routes(networks, routes: dict) -> None:
    """Every route an ensemble of as many members with embeddings of the same widths (one output
    shape for all images), for a known cell type."""
    widths = [int(backbone.output.shape[-1]) for backbone, _ in networks]
    for cell_type, group in routes.items():
        if cell_type not in constants.CELL_TYPES:
            raise ValueError(f"route {cell_type!r} is not one of {list(constants.CELL_TYPES)}")
        if [int(backbone.output.shape[-1]) for backbone, _ in group] != widths:
            raise ValueError(
                f"the {cell_type} models must match the general ensemble member for member "
                f"(embedding widths {widths})"
            )


def _image_inputs() -> list:
    """The inputs of `serving_default`: uint8 images of any size and their statistics."""
    return [
        tf.TensorSpec((None, None, None, constants.NUM_CHANNELS), tf.uint8, name="image"),
        tf.TensorSpec((None, constants.NUM_CHANNELS), tf.float32, name="mean"),
        tf.TensorSpec((None, constants.NUM_CHANNELS), tf.float32, name="std"),
    ]


def export_saved_model(
    networks,
    path: str,
    *,
    image_size: int,
    normalization: str,
    class_names=None,
    serving_version: int | None = None,
    routes: dict | None = None,
) -> str:
    """Writes the SavedModel of `networks` (a list of (backbone, head), averaged) to `path`.

    Args:
      class_names: the name of each of the 1108 siRNA classes for the `metadata` signature (e.g.
        `class_names_from({id: name})`); default the ids "0".."1107".
      serving_version: write to `path/<version>/` instead, the layout TF Serving watches (a new
        version is a new folder, so a server switches models without a restart).
      routes: `{cell type: list of (backbone, head)}`: adds the `serving_by_cell_type` signature,
        which predicts each listed cell type with its own ensemble (members as in `networks`).

    Returns:
      The folder holding `saved_model.pb`.
    """
    if serving_version is not None:
        path = serving_path(path, serving_version)
    routes = dict(routes or {})
    _check_routes(networks, routes)
    archive = keras.export.ExportArchive()
    for backbone, head in [*networks, *(pair for group in routes.values() for pair in group)]:
        archive.track(backbone)
        archive.track(head)
    class_names = list(sirna_class_names() if class_names is None else class_names)
    if len(class_names) != constants.NUM_SIRNAS:
        raise ValueError(f"need {constants.NUM_SIRNAS} class names, got {len(class_names)}")

    def serve(image, mean, std):
        return serving_outputs(networks, image, mean, std, image_size=image_size)

    archive.add_endpoint(
        "serving_default",
        serve,
        input_signature=_image_inputs(),
    )
    if routes:

        def serve_by_cell_type(image, mean, std, cell_type):
            return routed_serving_outputs(
                networks, routes, image, mean, std, cell_type, image_size=image_size
            )

        archive.add_endpoint(
            ROUTED_SIGNATURE,
            serve_by_cell_type,
            input_signature=[*_image_inputs(), tf.TensorSpec((None,), tf.string, name="cell_type")],
        )

    def metadata():
        return {
            "class_names": tf.constant(class_names),
            "normalization": tf.constant(normalization),
            "image_size": tf.constant(image_size, tf.int32),
            "num_models": tf.constant(len(networks), tf.int32),
            "cell_types": tf.constant(sorted(routes), tf.string, shape=(len(routes),)),
        }

    archive.add_endpoint("metadata", metadata, input_signature=[])
    archive.write_out(path, verbose=False)
    return path


def check_compatible(configs) -> tuple[int, str]:
    """The members' shared (image_size, normalization); raises ValueError if they differ.

    One signature feeds every member the same pixels and statistics, so both must agree.
    """
    sizes = {int(config.data.image_size) for config in configs}
    normalizations = {config.data.normalization for config in configs}
    if len(sizes) != 1 or len(normalizations) != 1:
        raise ValueError(
            f"ensemble members must share image_size and normalization; got sizes {sorted(sizes)} "
            f"and normalizations {sorted(normalizations)}"
        )
    return sizes.pop(), normalizations.pop()


def export_run_folders(run_folders, output, *, routes=None, **options) -> str:
    """Exports the inference networks of training folders as one SavedModel (an ensemble if several).

    Each folder's network is rebuilt from its `config.json` and its best (else last) checkpoint.
    `routes`: `{cell type: training folders}` of per-cell-type models, in the order of
    `run_folders` (`export_saved_model`'s routes). `options`: `export_saved_model`'s class_names
    and serving_version.
    """
    from deepnoise_tf import factory, workdir

    if not run_folders:
        raise ValueError("name at least one training folder")
    routes = {cell_type: list(folders) for cell_type, folders in (routes or {}).items()}
    every = [*run_folders, *(folder for folders in routes.values() for folder in folders)]
    image_size, normalization = check_compatible([workdir.read_config(f) for f in every])
    networks = [factory.load_inference_network(folder)[1] for folder in run_folders]
    routed = {
        cell_type: [factory.load_inference_network(folder)[1] for folder in folders]
        for cell_type, folders in routes.items()
    }
    return export_saved_model(
        networks,
        str(output),
        image_size=image_size,
        normalization=normalization,
        routes=routed,
        **options,
    )


# ------------------------------------------------------------------------------------------------
# Class names and the TF Serving layout


def class_names_from(names: dict, num_sirnas: int = constants.NUM_SIRNAS) -> list[str]:
    """The export's class names from `{sirna id: name}` (e.g. `raw_images.sirna_names`).

    Ids the mapping lacks keep their id as name, so a partial source still yields one name per class.
    """
    return [str(names.get(index, index)) for index in range(num_sirnas)]


def serving_path(base, version: int) -> str:
    """`base/<version>`: where TF Serving (`--model_base_path=base`) looks for a model version."""
    version = int(version)
    if version < 0:
        raise ValueError(f"a TF Serving version is a non-negative integer, got {version}")
    return str(pathlib.Path(base) / str(version))


def copy_to_serving_layout(export_dir, base, version: int) -> str:
    """Copies an existing export (e.g. a training folder's `export/`) to `base/<version>/`.

    Refuses to overwrite a version: TF Serving may be serving it, and versions are immutable.
    """
    if not (pathlib.Path(export_dir) / "saved_model.pb").exists():
        raise FileNotFoundError(f"{export_dir} holds no saved_model.pb")
    target = pathlib.Path(serving_path(base, version))
    if target.exists():
        raise FileExistsError(f"{target} exists; pick a new version number")
    staging = target.with_name(f".{target.name}.incomplete")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(export_dir, staging)
    staging.rename(target)  # a server polling `base` never sees a half-copied version
    return str(target)
