"""The feature baseline: CellProfiler-style per-site features and a regularised logistic regression.

What a biologist would fit without a CNN, and what the paper claims to beat (issue 17, item 2):
per channel intensity distribution, GLCM texture and a granularity spectrum; Otsu-segmented nuclei
(count, size, shape) and per-channel objects; the localisation of each channel inside vs outside the
nuclei. Site features are averaged per well, z-scored over each plate's wells (the analogue of the
paper's plate normalization, "Plate-based normalization"), and fed to the linear floor's softmax
regression (`baselines`), whose `l2` is chosen by leave-one-experiment-out cross-validation on the
training experiments only, the fits on one BLAS thread. docs/feature_baseline.md lists the features and the measured accuracy.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import skimage.feature
import skimage.filters
import skimage.measure
import skimage.morphology
import threadpoolctl

from deepnoise_tf import baselines, constants, evaluation

NUCLEUS_CHANNEL = constants.CHANNEL_NAMES.index("nucleus")  # w1, Hoechst on RxRx1
INTENSITY_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
GLCM_LEVELS = 16  # grey levels after quantising each channel between its 1st and 99th percentile
GLCM_DISTANCES = (1, 2, 4)  # pixels; averaged over the four directions 0, 45, 90, 135 degrees
GLCM_PROPERTIES = ("contrast", "homogeneity", "correlation", "energy")
GRANULARITY_RADII = (
    1,
    2,
    3,
    4,
    6,
)  # disk radii of the opening spectrum, pixels (cells: ~2-4 px at 64)
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
_EPSILON = 1e-9


def intensity_distribution(images: np.ndarray) -> np.ndarray:
    """`[N, C, 3 + Q]`: per channel mean, std, skewness and the `INTENSITY_QUANTILES`.

    The skewness is Pearson's median form, 3 (mean - median) / std: no third moment to compute.
    """
    pixels = np.moveaxis(np.asarray(images).reshape(len(images), -1, images.shape[-1]), 1, 2)
    pixels = np.ascontiguousarray(pixels, np.float64)  # [N, C, pixels]
    mean, std = pixels.mean(axis=2), pixels.std(axis=2)
    quantiles = np.moveaxis(np.quantile(pixels, INTENSITY_QUANTILES, axis=2), 0, -1)  # [N, C, Q]
    median = np.quantile(pixels, 0.5, axis=2)
    skewness = 3 * (mean - median) / np.maximum(std, _EPSILON)
    return np.concatenate([np.stack([mean, std, skewness], -1), quantiles], -1)


def quantize(image: np.ndarray, levels: int = GLCM_LEVELS) -> np.ndarray:
    """`[H, W]` uint8 in 0..levels-1: the image binned evenly between its 1st and 99th percentile.

    Per image, so the texture does not see the channel gain (a technical effect).
    """
    low, high = np.percentile(image, (1, 99))
    scaled = (np.asarray(image, np.float64) - low) / max(high - low, _EPSILON)
    return np.clip(np.floor(scaled * levels), 0, levels - 1).astype(np.uint8)


def glcm_texture(image: np.ndarray) -> np.ndarray:
    """`[P * D]` Haralick properties (`GLCM_PROPERTIES` x `GLCM_DISTANCES`) of one `[H, W]` channel."""
    matrix = skimage.feature.graycomatrix(
        quantize(image),
        distances=GLCM_DISTANCES,
        angles=(0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4),
        levels=GLCM_LEVELS,
        symmetric=True,
        normed=True,
    )
    # A flat image has a zero-variance GLCM: correlation is undefined (skimage returns 1).
    return np.concatenate(
        [skimage.feature.graycoprops(matrix, name).mean(axis=1) for name in GLCM_PROPERTIES]
    )


def cross_filter(images: np.ndarray, reduce: np.ufunc) -> np.ndarray:
    """Grey erosion (`np.minimum`) or dilation (`np.maximum`) of `[N, H, W, C]` images by the 3x3
    cross, edges repeated (`scipy.ndimage.grey_erosion(mode="nearest")` with `disk(1)`, but cheaper)."""
    height, width = images.shape[1:3]
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    shifts = ((1, 1), (0, 1), (2, 1), (1, 0), (1, 2))
    return reduce.reduce([padded[:, y : y + height, x : x + width] for y, x in shifts])


def granularity_spectrum(images: np.ndarray, radii=GRANULARITY_RADII) -> np.ndarray:
    """`[N, C, R]`: the share of each channel's signal removed by grey openings of growing radius.

    CellProfiler's granularity: spectrum r is (mean(open_{r-1}) - mean(open_r)) / (mean(image) -
    min(image)), open_0 being the image; a structure vanishes at the first opening larger than it.
    As in CellProfiler, an opening of radius r is r erosions then r dilations by the 3x3 cross,
    i.e. by a diamond of radius r; all images and channels go through at once.
    """
    images = np.asarray(images)
    floor = images.min(axis=(1, 2)).astype(np.float64)
    previous = images.mean(axis=(1, 2), dtype=np.float64)
    total = np.maximum(previous - floor, _EPSILON)
    eroded, eroded_radius, spectrum = images, 0, []
    for radius in radii:
        for _ in range(radius - eroded_radius):
            eroded = cross_filter(eroded, np.minimum)
        eroded_radius = radius
        opened = eroded
        for _ in range(radius):
            opened = cross_filter(opened, np.maximum)
        current = opened.mean(axis=(1, 2), dtype=np.float64)
        spectrum.append((previous - current) / total)
        previous = current
    return np.stack(spectrum, axis=-1)


OBJECT_MEASURES = ("count", "area", "area_std", "eccentricity", "solidity")


def otsu_mask(image: np.ndarray) -> np.ndarray:
    """Foreground of one `[H, W]` channel by Otsu's threshold (all background when the image is flat)."""
    if image.min() == image.max():
        return np.zeros(image.shape, bool)
    return image > skimage.filters.threshold_otsu(image)


def object_shape(mask: np.ndarray, *, solidity: bool = False) -> np.ndarray:
    """`[5]` (`OBJECT_MEASURES`): count, mean and std of the area, mean eccentricity and mean solidity
    of the mask's connected objects (8-connected); zeros when there is none.

    Area and eccentricity come from each object's pixel moments in one pass (the eccentricity of the
    ellipse with the same second moments, as `regionprops`); solidity needs a convex hull per object,
    so it is measured only when asked (the nuclei) and 0 otherwise.
    """
    labels = skimage.measure.label(mask, connectivity=2)
    count = labels.max()
    if count == 0:
        return np.zeros(len(OBJECT_MEASURES))
    rows, columns = np.nonzero(labels)
    index = labels[rows, columns]
    area = np.bincount(index, minlength=count + 1)[1:].astype(np.float64)

    def object_mean(values):
        return np.bincount(index, values, minlength=count + 1)[1:] / area

    mean_row, mean_column = object_mean(rows), object_mean(columns)
    var_row = object_mean(rows.astype(np.float64) ** 2) - mean_row**2
    var_column = object_mean(columns.astype(np.float64) ** 2) - mean_column**2
    covariance = object_mean(rows * columns.astype(np.float64)) - mean_row * mean_column
    half_trace = (var_row + var_column) / 2
    root = np.sqrt(np.maximum(((var_row - var_column) / 2) ** 2 + covariance**2, 0.0))
    major, minor = half_trace + root, np.maximum(half_trace - root, 0.0)
    eccentricity = np.where(major > _EPSILON, np.sqrt(1 - minor / np.maximum(major, _EPSILON)), 0)
    solidity_mean = 0.0
    if solidity:
        table = skimage.measure.regionprops_table(labels, properties=("solidity",))
        solidity_mean = table["solidity"].mean()
    return np.array([count, area.mean(), area.std(), eccentricity.mean(), solidity_mean])


def localisation(image: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """`[3C]` of one `[H, W, C]` site: each channel's mean inside the nuclei, outside them, and the
    ratio inside / outside (where a channel's signal sits relative to the nucleus)."""
    image = np.asarray(image, np.float64)
    empty = np.zeros(image.shape[-1])
    inside = image[nuclei].mean(axis=0) if nuclei.any() else empty
    outside = image[~nuclei].mean(axis=0) if (~nuclei).any() else empty
    return np.concatenate([inside, outside, inside / np.maximum(outside, _EPSILON)])


def site_features(images: np.ndarray) -> np.ndarray:
    """`[N, D]` features of raw `[N, H, W, C]` sites; `feature_names()` names the columns.

    Objects are Otsu-segmented per channel: on `NUCLEUS_CHANNEL` they are the nuclei, whose mask
    also splits every channel into inside and outside for `localisation`.
    """
    images = np.asarray(images)
    count, channels = len(images), images.shape[-1]
    intensity = intensity_distribution(images).reshape(count, -1)
    granularity = granularity_spectrum(images).reshape(count, -1)
    per_site = []
    for image in images:
        masks = [otsu_mask(image[..., channel]) for channel in range(channels)]
        texture = [glcm_texture(image[..., channel]) for channel in range(channels)]
        objects = [
            object_shape(mask, solidity=channel == NUCLEUS_CHANNEL)
            for channel, mask in enumerate(masks)
        ]
        per_site.append(
            np.concatenate([*texture, *objects, localisation(image, masks[NUCLEUS_CHANNEL])])
        )
    return np.concatenate([intensity, granularity, np.asarray(per_site)], axis=1)


def feature_names(channels=constants.CHANNEL_NAMES) -> list[str]:
    """The column names of `site_features`, in order."""
    quantiles = [f"q{round(100 * q):02d}" for q in INTENSITY_QUANTILES]
    names = [f"{c}_{s}" for c in channels for s in ("mean", "std", "skewness", *quantiles)]
    names += [f"{c}_granularity_r{r}" for c in channels for r in GRANULARITY_RADII]
    names += [
        f"{c}_glcm_{p}_d{d}" for c in channels for p in GLCM_PROPERTIES for d in GLCM_DISTANCES
    ]
    names += [f"{c}_objects_{m}" for c in channels for m in OBJECT_MEASURES]
    names += [f"{c}_{where}_nuclei" for where in ("inside", "outside") for c in channels]
    names += [f"{c}_inside_outside_ratio" for c in channels]
    return names


def plate_zscore(wells: pd.DataFrame, features: np.ndarray) -> np.ndarray:
    """Each feature z-scored over the wells of its plate (experiment, plate); constant features -> 0."""
    features = np.asarray(features, np.float64)
    result = np.empty_like(features)
    for rows in wells.groupby(["experiment", "plate"], sort=False).indices.values():
        block = features[rows]
        scale = block.std(axis=0)
        result[rows] = (block - block.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    return result


def well_features(config, split: str = "train") -> tuple[pd.DataFrame, np.ndarray]:
    """`(wells, features)`: `site_features` averaged per well, then z-scored per plate."""
    sites, values = baselines.site_feature_table(
        config, split, lambda batch: site_features(batch["image"]), batch_size=64
    )
    wells, features = evaluation.aggregate_wells(sites, values)
    return wells, plate_zscore(wells, features)


def experiment_folds(wells: pd.DataFrame, count: int | None = None) -> np.ndarray:
    """`[wells]` cross-validation fold of each well; every experiment sits in exactly one fold.

    `count` None: one fold per experiment (leave one experiment out). `count` k: the experiments of
    each cell type, sorted by name, are dealt to folds 0..k-1 in turn, so a fold holds out about one
    experiment per cell type and the fits scoring it still see every cell type (k fits per `l2`
    instead of one per experiment, each on fewer wells). Call it with the training wells only.
    """
    experiments = wells["experiment"].to_numpy()
    cell_type_of = dict(zip(wells["experiment"], wells["cell_type"], strict=False))
    fold_of = {}
    for index, name in enumerate(np.unique(experiments)):  # sorted: the rank within the cell type
        rank = sum(cell_type_of[other] == cell_type_of[name] for other in fold_of)
        fold_of[name] = index if count is None else rank % count
    if len(set(fold_of.values())) < 2:
        raise ValueError(f"cross-validation needs at least two folds of experiments, got {fold_of}")
    return np.array([fold_of[name] for name in experiments])


def cross_validation_correct(
    features: np.ndarray, labels: np.ndarray, folds: np.ndarray, grid, fit, scored=None
) -> np.ndarray:
    """`[len(grid)]` correct held-out wells summed over the folds, each fold predicted by a fit on
    the others; only the wells marked in `scored` count (default all). Per fold the grid is walked
    from strong to weak `l2`, each fit starting from the previous one (`warm_start`: the same
    optimum in fewer steps)."""
    scored = np.ones(len(labels), bool) if scored is None else np.asarray(scored, bool)
    correct = np.zeros(len(grid))
    for fold in np.unique(folds):
        held_out = folds == fold
        model = None
        for index in np.argsort(grid)[::-1]:
            model = fit(features[~held_out], labels[~held_out], l2=grid[index], warm_start=model)
            predictions = model.classes[np.argmax(model.logits(features[held_out]), axis=1)]
            correct[index] += np.sum((predictions == labels[held_out]) & scored[held_out])
    return correct


def cross_validated_l2(
    wells: pd.DataFrame,
    features: np.ndarray,
    grid=L2_GRID,
    fit=baselines.fit_softmax_regression,
    fold_count: int | None = None,
) -> float:
    """The `l2` of `grid` with the most correct held-out treatment wells over
    `experiment_folds(wells, fold_count)` (default: leave one experiment out); ties go to the larger
    (simpler) `l2`. Controls are fitted but not counted: the reported accuracy is over treatment
    wells, and the repeated control classes would otherwise weigh a third of the score. Call it
    with the training wells only; it prints its choice."""
    start = time.perf_counter()
    folds = experiment_folds(wells, fold_count)
    treatment = (wells["well_type"] == "treatment").to_numpy()
    correct = cross_validation_correct(
        features, wells["label"].to_numpy(), folds, grid, fit, scored=treatment
    )
    best = max(grid[index] for index in np.flatnonzero(correct == correct.max()))
    scores = ", ".join(f"{l2:g}: {count:.0f}" for l2, count in zip(grid, correct, strict=True))
    print(
        f"[features] l2={best:g} chosen by {len(np.unique(folds))}-fold CV over "
        f"{wells['experiment'].nunique()} training experiments ({len(np.unique(folds)) * len(grid)} "
        f"fits, {time.perf_counter() - start:.1f} s; correct of {int(treatment.sum())} treatment wells: {scores})",
        flush=True,
    )
    return float(best)


def feature_baseline_logits(config, report_split: str = "val") -> tuple[pd.DataFrame, np.ndarray]:
    """The feature baseline's `(wells, logits)` on `report_split` (`baselines.REPORT_SPLITS`), in
    the format of `baselines.linear_floor_logits`; `l2` is chosen on the training experiments only."""
    # One BLAS thread: a fit is ~500 wells x 198 features x ~40 classes, too small to share out; on
    # a loaded machine the threads' hand-offs made each objective 20x slower (docs/feature_baseline.md).
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        return baselines.fit_and_report_wells(
            config, well_features, report_split=report_split, choose_l2=cross_validated_l2
        )
