"""Intervals for the ablation protocol: a bootstrap over wells and training seeds, paired differences, verdicts.

Why: at CPU scale one well is 0.4-0.6 points and two trainings that differ only in their seed can end
tens of points apart (docs/ablation.md), so a single number per step cannot say whether one step beats
another. Each step is scored by its per-well treatment accuracy on the same wells for every seed; the
statistic is the mean over seeds of the accuracy over wells. Its interval is a percentile bootstrap
(`BOOTSTRAP_SAMPLES` draws, seeded) that resamples the wells and, by default, the training seeds too,
so the run-to-run spread of the trainings widens the interval instead of hiding behind three seeds.
A difference between two steps resamples the same wells and seeds for both (a paired bootstrap), and
an ordering's verdict reads its interval (docs/ablation.md, "Protocol").

Pure numpy: `correct` arrays are `[seeds, wells]` of 0/1 (a floor repeats its one fit on every row).
"""

from __future__ import annotations

import dataclasses

import numpy as np

BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95
VERDICTS = ("holds clearly", "holds in the mean", "fails in the mean", "fails clearly")


@dataclasses.dataclass(frozen=True)
class Interval:
    """A statistic (`mean`) and its percentile-bootstrap interval `[low, high]`."""

    mean: float
    low: float
    high: float


def as_matrix(correct) -> np.ndarray:
    """`[seeds, wells]` float64: a 1-D vector is one seed."""
    matrix = np.asarray(correct, dtype=np.float64)
    matrix = matrix[np.newaxis] if matrix.ndim == 1 else matrix
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(
            f"expected [seeds, wells] with at least one value, got shape {matrix.shape}"
        )
    return matrix


def bootstrap_draws(
    seeds: int, wells: int, samples: int, rng_seed: int, resample_seeds: bool
) -> tuple[np.ndarray, np.ndarray]:
    """`(seed_index [B, S], well_index [B, W])`: each draw's seeds and wells, with replacement.

    Drawn from `np.random.default_rng(rng_seed)`, wells first, then seeds (identity without
    `resample_seeds`): the same arguments give the same draws, whatever is being resampled.
    """
    rng = np.random.default_rng(rng_seed)
    well_index = rng.integers(0, wells, size=(samples, wells))
    if resample_seeds:
        seed_index = rng.integers(0, seeds, size=(samples, seeds))
    else:
        seed_index = np.broadcast_to(np.arange(seeds), (samples, seeds))
    return seed_index, well_index


def bootstrap_statistics(
    values, *, samples: int = BOOTSTRAP_SAMPLES, rng_seed: int = 0, resample_seeds: bool = True
) -> np.ndarray:
    """`[B]`: for each draw, the mean over the drawn seeds of the mean over the drawn wells."""
    matrix = as_matrix(values)
    seed_index, well_index = bootstrap_draws(*matrix.shape, samples, rng_seed, resample_seeds)
    # One [B, W] gather per seed keeps memory at B x W whatever the number of seeds.
    per_seed = np.stack([row[well_index].mean(axis=1) for row in matrix], axis=1)  # [B, S]
    return np.take_along_axis(per_seed, seed_index, axis=1).mean(axis=1)


def bootstrap_interval(
    values,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    rng_seed: int = 0,
    confidence: float = CONFIDENCE,
    resample_seeds: bool = True,
) -> Interval:
    """The mean of `values` `[seeds, wells]` and its percentile-bootstrap interval."""
    matrix = as_matrix(values)
    statistics = bootstrap_statistics(
        matrix, samples=samples, rng_seed=rng_seed, resample_seeds=resample_seeds
    )
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(statistics, [tail, 100.0 - tail])
    return Interval(float(matrix.mean()), float(low), float(high))


def paired_difference(correct_a, correct_b, **options) -> Interval:
    """accuracy(A) - accuracy(B) on the same wells and seeds, both resampled by the same draws.

    `options`: `bootstrap_interval`'s keywords. Identical inputs give exactly 0 everywhere.
    """
    a, b = as_matrix(correct_a), as_matrix(correct_b)
    if a.shape != b.shape:
        raise ValueError(f"paired steps need the same seeds and wells: {a.shape} vs {b.shape}")
    return bootstrap_interval(a - b, **options)


def verdict(difference: Interval, strict: bool = True) -> str:
    """ "holds clearly": the whole interval above 0; "holds in the mean": the mean above 0 but the
    interval reaches 0; "fails in the mean": the mean at or below 0 but the interval reaches above
    it; "fails clearly": the whole interval below 0 (for `>=`, at or below 0 with a mean below 0).
    Only the outer two are findings; the middle two say the seeds and wells cannot decide. For an
    "at least as good" ordering (`strict` False) an exact tie counts as holding in the mean (the 3B
    ladder's reading in `ablation_steps.ordering_checks`), and an interval of exactly [0, 0] as
    holding clearly (identical predictions)."""
    if difference.low > 0 or (not strict and difference.low == difference.high == 0):
        return "holds clearly"
    if difference.mean > 0 or (not strict and difference.mean == 0):
        return "holds in the mean"
    if difference.high < 0 or (strict and difference.high <= 0):
        return "fails clearly"
    return "fails in the mean"


@dataclasses.dataclass(frozen=True)
class Ordering:
    """`better` should beat `worse` (strictly, or at least match it when `strict` is False)."""

    group: str  # "3A", "3B", "floor" or "features"
    better: str
    worse: str
    strict: bool = True

    @property
    def statement(self) -> str:
        return f"{self.better} {'>' if self.strict else '>='} {self.worse}"


# The deep models: every trained step and the two derived from the mean teachers.
DEEP_STEPS = ("norm_cell_type", "norm_experiment", "norm_plate", "arcface", "mean_teacher",
              "mean_teacher_wide", "ensemble", "postprocess")  # fmt: skip
_FIGURE_3B = ("norm_plate", "arcface", "mean_teacher", "ensemble", "postprocess")
# The orderings `ablation_steps.ordering_checks` checks on one run (paper Fig. 3A: cell type <
# experiment < plate; Fig. 3B: each component at least as good as the step before; every deep model
# above the linear floor), as pairs, plus the bar: the deep ensemble at least matches the
# feature baseline a biologist would otherwise use.
ORDERINGS = (
    Ordering("3A", "norm_experiment", "norm_cell_type"),
    Ordering("3A", "norm_plate", "norm_experiment"),
    *(Ordering("3B", b, a, strict=False) for a, b in zip(_FIGURE_3B, _FIGURE_3B[1:], strict=False)),
    *(Ordering("floor", name, "linear_floor") for name in DEEP_STEPS),
    Ordering("features", "ensemble", "feature_baseline", strict=False),
)


def ordering_results(correct_by_step: dict, orderings=ORDERINGS, **options) -> list[tuple]:
    """`(ordering, Interval of the difference, verdict)` for each ordering whose steps are given.

    `correct_by_step`: `{step: [seeds, wells]}`, rows and columns aligned across steps.
    """
    results = []
    for ordering in orderings:
        if ordering.better in correct_by_step and ordering.worse in correct_by_step:
            difference = paired_difference(
                correct_by_step[ordering.better], correct_by_step[ordering.worse], **options
            )
            results.append((ordering, difference, verdict(difference, ordering.strict)))
    return results
