"""The final export routes each cell type to its fine-tuned models (paper, "Fine-tuning": each cell
type is predicted by its own models), in one SavedModel whose `serving_default` is unchanged.

Tiny untrained networks (factory-built heads, two-convolution stand-in backbones) with perturbed
weights, no training: every group of members differs, so a wrong route shows. The reference runs each image's own members in Keras on numpy-normalized pixels
and averages their logits in numpy, independently of the partitioning inside the export.
"""

import numpy as np
import pytest
import tensorflow as tf
from conftest import perturbed, stand_in_backbone

from deepnoise_tf import config as config_lib
from deepnoise_tf import constants, export, factory, inference, models

IMAGE_SIZE = 16
MEMBERS = ("xception", "xception_wide")
ROUTED = ("HEPG2", "HUVEC")
# One row per image: two routed cell types, two without a route (general ensemble), and "".
CELL_TYPES = ["HUVEC", "RPE", "HEPG2", "HUVEC", "", "U2OS", "HEPG2", "RPE", "HUVEC"]


def networks(seed: int) -> list:
    """One (backbone, head) per member, weights shifted at random so every build differs."""
    config = config_lib.cpu_scale(config_lib.default_config())
    config.model.width = 0.0625
    rng = np.random.default_rng(seed)
    pairs = []
    for backbone in MEMBERS:
        config.model.backbone = backbone
        built = factory.build_network(config.model, IMAGE_SIZE, f"{backbone}_{seed}")
        perturbed(built["backbone"].weights + built["head"].weights, rng)
        pairs.append((built["backbone"], built["head"]))
    return pairs


def reference(pairs, image, mean, std):
    """(mean logits, scaled concatenated unit embeddings) of `pairs`, in numpy around Keras calls."""
    normalized = (image.astype(np.float32) - mean[:, None, None, :]) / std[:, None, None, :]
    logits, embeddings = [], []
    for backbone, head in pairs:
        embedding = np.asarray(backbone(normalized, training=False), np.float64)
        logits.append(np.asarray(head(embedding.astype(np.float32), training=False), np.float64))
        embeddings.append(embedding / np.linalg.norm(embedding, axis=1, keepdims=True))
    return np.mean(logits, axis=0), np.concatenate(embeddings, axis=1) / np.sqrt(len(pairs))


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "build", stand_in_backbone)
        general = networks(0)
        routes = {cell_type: networks(seed) for seed, cell_type in enumerate(ROUTED, 1)}
    path = str(tmp_path_factory.mktemp("routed") / "export")
    export.export_saved_model(
        general, path, image_size=IMAGE_SIZE, normalization="plate", routes=routes
    )
    rng = np.random.default_rng(3)
    count = len(CELL_TYPES)
    inputs = {
        "image": rng.integers(0, 256, (count, IMAGE_SIZE, IMAGE_SIZE, 6), dtype=np.uint8),
        "mean": rng.uniform(20, 120, (count, 6)).astype(np.float32),
        "std": rng.uniform(10, 40, (count, 6)).astype(np.float32),
    }
    return {"path": path, "general": general, "routes": routes, "inputs": inputs}


def expected(routed, rows=slice(None), transform=None):
    """Reference outputs of each row's own ensemble (its route, else the general one)."""
    inputs = {key: value[rows] for key, value in routed["inputs"].items()}
    cell_types = np.asarray(CELL_TYPES)[rows]
    images = inputs["image"] if transform is None else transform(inputs["image"])
    rows = []
    for index, cell_type in enumerate(cell_types):
        pairs = routed["routes"].get(cell_type, routed["general"])
        one = slice(index, index + 1)
        rows.append(reference(pairs, images[one], inputs["mean"][one], inputs["std"][one]))
    return np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])


def test_each_cell_type_gets_its_own_ensemble(routed):
    loaded = tf.saved_model.load(routed["path"])
    served = loaded.signatures[export.ROUTED_SIGNATURE](
        **{key: tf.constant(value) for key, value in routed["inputs"].items()},
        cell_type=tf.constant(CELL_TYPES),
    )
    logits, embeddings = expected(routed)
    assert embeddings.shape == tuple(served["embedding"].shape)
    np.testing.assert_allclose(served["logits"].numpy(), logits, atol=2e-4)
    np.testing.assert_allclose(served["embedding"].numpy(), embeddings, atol=2e-5)
    probabilities = served["probabilities"].numpy()
    sirna = np.exp(
        logits[:, : constants.NUM_SIRNAS] - logits[:, : constants.NUM_SIRNAS].max(1, keepdims=True)
    )
    np.testing.assert_allclose(probabilities, sirna / sirna.sum(1, keepdims=True), atol=1e-5)
    # The routes differ from each other and from the general ensemble (a wrong route would show).
    general, _ = reference(
        routed["general"], *(routed["inputs"][k] for k in ("image", "mean", "std"))
    )
    huvec = [i for i, name in enumerate(CELL_TYPES) if name == "HUVEC"]
    assert np.abs(general[huvec] - logits[huvec]).max() > 1e-2


def test_batches_of_one_route_only_and_the_unchanged_default(routed):
    loaded = tf.saved_model.load(routed["path"])
    rows = [i for i, name in enumerate(CELL_TYPES) if name == "HEPG2"]
    served = loaded.signatures[export.ROUTED_SIGNATURE](
        **{key: tf.constant(value[rows]) for key, value in routed["inputs"].items()},
        cell_type=tf.constant(["HEPG2"] * len(rows)),
    )
    np.testing.assert_allclose(served["logits"].numpy(), expected(routed, rows)[0], atol=2e-4)
    # serving_default keeps its three inputs and serves the general ensemble to every image.
    default = loaded.signatures["serving_default"](
        **{key: tf.constant(value) for key, value in routed["inputs"].items()}
    )
    general, _ = reference(
        routed["general"], *(routed["inputs"][k] for k in ("image", "mean", "std"))
    )
    np.testing.assert_allclose(default["logits"].numpy(), general, atol=2e-4)
    metadata = loaded.signatures["metadata"]()
    assert [name.decode() for name in metadata["cell_types"].numpy()] == list(ROUTED)
    assert int(metadata["num_models"]) == len(MEMBERS)


def site_batches(inputs):
    """A data set shaped like `inference.site_batches`' (identifiers, label -1)."""
    count = len(CELL_TYPES)
    columns = {
        "id_code": [f"E-1_1_B{index:02d}" for index in range(count)],
        "site": np.ones(count, np.int64),
        "experiment": ["E-1"] * count,
        "plate": np.ones(count, np.int64),
        "well": [f"B{index:02d}" for index in range(count)],
        "cell_type": CELL_TYPES,
        "well_type": ["treatment"] * count,
        "label": np.full(count, -1, np.int32),
    }
    return tf.data.Dataset.from_tensor_slices({**columns, **inputs}).batch(4)


@pytest.mark.parametrize("tta", [False, True])
def test_predict_routes_by_the_sites_cell_type(routed, tta):
    """`inference.load_export` picks the routed signature and feeds it each site's cell type, the
    test-time views included (mean of the 8 dihedral views' logits, in numpy)."""
    predictor = inference.load_export(routed["path"])
    assert predictor.serve_by_cell_type is not None
    sites, logits, _ = inference.predict_sites(
        {"model": predictor}, site_batches(routed["inputs"]), tta=tta
    )
    assert list(sites["cell_type"]) == CELL_TYPES
    if not tta:
        want = expected(routed)[0]
    else:
        views = [
            lambda x, k=k, flip=flip: np.rot90(x[:, :, ::-1] if flip else x, k, axes=(1, 2))
            for flip in (False, True)
            for k in range(4)
        ]
        want = np.mean([expected(routed, transform=view)[0] for view in views], axis=0)
    np.testing.assert_allclose(logits["model"], want, atol=3e-4)


def test_exports_without_routes_load_and_serve_as_before(routed, tmp_path):
    path = export.export_saved_model(
        routed["general"], str(tmp_path / "plain"), image_size=IMAGE_SIZE, normalization="plate"
    )
    predictor = inference.load_export(path)
    assert predictor.serve_by_cell_type is None
    assert export.ROUTED_SIGNATURE not in tf.saved_model.load(path).signatures
    _, logits, _ = inference.predict_sites({"model": predictor}, site_batches(routed["inputs"]))
    general, _ = reference(
        routed["general"], *(routed["inputs"][k] for k in ("image", "mean", "std"))
    )
    np.testing.assert_allclose(logits["model"], general, atol=2e-4)


def test_routes_must_match_the_general_members(routed):
    with pytest.raises(ValueError, match="member for member"):
        export.export_saved_model(
            routed["general"],
            "unused",
            image_size=IMAGE_SIZE,
            normalization="plate",
            routes={"HUVEC": routed["routes"]["HUVEC"][:1]},
        )
    with pytest.raises(ValueError, match="MCF7"):
        export.export_saved_model(
            routed["general"],
            "unused",
            image_size=IMAGE_SIZE,
            normalization="plate",
            routes={"MCF7": routed["general"]},
        )
