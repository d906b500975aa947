"""The linear floor: multinomial logistic regression on per-channel intensity features of each well.

Every deep model of the ablation must clear this floor. Its features are the mean and standard
deviation of each channel of the plate-normalized image (paper, "Plate-based normalization"),
averaged over a well's sites; the regression is fitted by L-BFGS on the wells of the training
experiments and scored on the held-out ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pandas as pd
import scipy.optimize

from deepnoise_tf import constants, evaluation

ABSENT_CLASS_LOGIT = -1e4  # classes never seen in training: finite, so averaging stays defined


def intensity_features(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """`[N, 2C]`: per channel, mean and std of the normalized image (x - mean) / std.

    The normalization is the paper's per-channel standardization by group statistics (eqs. 1-3).
    Computed from the raw image's moments, since the normalization is affine per channel.
    """
    pixel_mean = images.mean(axis=(1, 2), dtype=np.float64)
    pixel_std = images.std(axis=(1, 2), dtype=np.float64)
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    return np.concatenate([(pixel_mean - mean) / std, pixel_std / std], axis=1)


def softmax_regression_objective(parameters, features, targets, num_classes: int, l2: float):
    """Mean cross-entropy of `softmax(features @ W + b)` plus `l2 / 2 * |W|^2`, and its gradient.

    `parameters` is `[W.ravel(), b]` with `W` of shape `[D, K]`; `targets` are class indices 0..K-1.
    """
    count, dims = features.shape
    weights = parameters[: dims * num_classes].reshape(dims, num_classes)
    bias = parameters[dims * num_classes :]
    logits = features @ weights + bias
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(count), targets].mean() + 0.5 * l2 * np.sum(weights**2)
    residual = np.exp(log_probs)
    residual[np.arange(count), targets] -= 1.0
    residual /= count
    gradient = np.concatenate(
        [(features.T @ residual + l2 * weights).ravel(), residual.sum(axis=0)]
    )
    return loss, gradient


@dataclasses.dataclass(frozen=True)
class SoftmaxRegression:
    """A fitted multinomial logistic regression over standardized features."""

    weights: np.ndarray  # [D, K]
    bias: np.ndarray  # [K]
    classes: np.ndarray  # [K] the label of each column
    feature_mean: np.ndarray  # [D]
    feature_scale: np.ndarray  # [D]

    def logits(self, features: np.ndarray) -> np.ndarray:
        standardized = (np.asarray(features, np.float64) - self.feature_mean) / self.feature_scale
        return standardized @ self.weights + self.bias

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        logits = self.logits(features)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)


def fit_softmax_regression(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    l2: float = 1e-3,
    max_iterations: int = 2000,
    warm_start: SoftmaxRegression | None = None,
) -> SoftmaxRegression:
    """Fits by L-BFGS (the objective is convex); features are standardized first.

    `l2` is fixed, not tuned: tuning it on the validation experiments would let the floor peek.
    `warm_start`, a fit on the same rows (e.g. at another `l2`), is where L-BFGS starts instead of 0:
    the optimum is the same, reached in fewer steps along a grid of `l2`.
    """
    features = np.asarray(features, np.float64)
    classes, targets = np.unique(np.asarray(labels), return_inverse=True)
    feature_mean = features.mean(axis=0)
    feature_scale = np.where(features.std(axis=0) > 0, features.std(axis=0), 1.0)
    standardized = (features - feature_mean) / feature_scale
    dims, num_classes = standardized.shape[1], len(classes)
    start = np.zeros(dims * num_classes + num_classes)
    if warm_start is not None:
        start = np.concatenate([warm_start.weights.ravel(), warm_start.bias])
    result = scipy.optimize.minimize(
        softmax_regression_objective,
        start,
        args=(standardized, targets, num_classes, l2),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iterations},
    )
    parameters = result.x
    return SoftmaxRegression(
        weights=parameters[: dims * num_classes].reshape(dims, num_classes),
        bias=parameters[dims * num_classes :],
        classes=classes,
        feature_mean=feature_mean,
        feature_scale=feature_scale,
    )


def full_class_logits(model: SoftmaxRegression, features: np.ndarray) -> np.ndarray:
    """`[N, 1139]` logits: the model's classes in their columns, the rest `ABSENT_CLASS_LOGIT`."""
    logits = np.full((len(features), constants.NUM_CLASSES), ABSENT_CLASS_LOGIT)
    logits[:, model.classes] = model.logits(features)
    return logits


REPORT_SPLITS = ("val", "test")  # the held-out validation experiments, or the test split


def check_report_split(report_split: str) -> str:
    """`report_split` if it is one of `REPORT_SPLITS`, else ValueError."""
    if report_split not in REPORT_SPLITS:
        raise ValueError(f"report_split must be one of {REPORT_SPLITS}, got {report_split!r}")
    return report_split


def site_feature_table(
    config, split: str, site_features: Callable[[dict], np.ndarray], *, batch_size: int = 16
) -> tuple[pd.DataFrame, np.ndarray]:
    """`(sites, features)`: every site of `split` (cell types of the config) and `site_features(batch)`.

    `sites` has `evaluation.SITE_COLUMNS` (`label` the siRNA). `site_features` maps a batch dict
    (`image` `[B, H, W, 6]` uint8, `plate_mean`, `plate_std` `[B, 6]`) to `[B, D]` features; the
    batches carry the plate statistics because the baselines always read plate-normalized inputs.
    """
    import tensorflow as tf

    from deepnoise_tf import data

    data_config = config.data.copy_and_resolve_references()
    with data_config.unlocked():
        data_config.normalization = "plate"  # the baselines always see plate-normalized features
        data_config.data_dir = data_config.data_dir or None
    sites = data.load_sites(data_config, split, with_labels=True, with_ids=True)
    sites = data.select_experiments(sites, cell_types=tuple(config.data.cell_types))
    columns = {name: [] for name in evaluation.SITE_COLUMNS}
    features = []
    # Small batches: np.std makes a float64 copy (16 native 512 px sites: 200 MB).
    for batch in sites.batch(batch_size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
        features.append(site_features(batch))
        batch["label"] = batch["sirna"]
        for name, parts in columns.items():
            parts.append(batch[name])
    table = pd.DataFrame({name: np.concatenate(parts) for name, parts in columns.items()})
    for name in ("id_code", "experiment", "well", "cell_type", "well_type"):
        table[name] = [value.decode() for value in table[name]]
    return table, np.concatenate(features)


def _plate_intensity_features(batch: dict) -> np.ndarray:
    return intensity_features(batch["image"], batch["plate_mean"], batch["plate_std"])


def well_intensity_features(config, split: str = "train") -> tuple[pd.DataFrame, np.ndarray]:
    """`(wells, features)`: every well of `split` (cell types of the config), features averaged over sites.

    `wells` has `evaluation.WELL_COLUMNS` (`label` the siRNA) in order of first appearance.
    """
    return evaluation.aggregate_wells(*site_feature_table(config, split, _plate_intensity_features))


def fit_and_report_wells(
    config,
    well_features: Callable[..., tuple[pd.DataFrame, np.ndarray]],
    *,
    report_split: str = "val",
    choose_l2: Callable[[pd.DataFrame, np.ndarray], float] | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Fits on the wells of the training experiments; returns the report wells and their logits.

    The fit always uses the train split minus `config.data.val_experiments`, so "val" and "test"
    score one and the same model. `well_features(config, split) -> (wells, features)`;
    `choose_l2(fit_wells, fit_features) -> l2` sees only the fitted wells (None: the fixed default).
    """
    check_report_split(report_split)
    wells, features = well_features(config, "train")
    held_out = wells["experiment"].isin(list(config.data.val_experiments)).to_numpy()
    fit_wells, fit_features = wells[~held_out].reset_index(drop=True), features[~held_out]
    l2_setting = {} if choose_l2 is None else {"l2": choose_l2(fit_wells, fit_features)}
    model = fit_softmax_regression(fit_features, fit_wells["label"].to_numpy(), **l2_setting)
    if report_split == "val":
        report_wells, report_features = wells[held_out].reset_index(drop=True), features[held_out]
    else:
        report_wells, report_features = well_features(config, "test")
        report_wells = report_wells.reset_index(drop=True)
    return report_wells, full_class_logits(model, report_features)


def linear_floor_logits(config, report_split: str = "val") -> tuple[pd.DataFrame, np.ndarray]:
    """The floor's `(wells, logits)` on `report_split` ("val": the held-out validation experiments;
    "test": the test split), fitted on the wells of the training experiments."""
    return fit_and_report_wells(config, well_intensity_features, report_split=report_split)
