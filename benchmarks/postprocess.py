"""Time the plate-prior post-processing on a full RxRx1-sized Kaggle test set.

18 experiments x 4 plates x 277 treatment wells x 1108 siRNAs (docs/method.md §1, §8), with
synthetic logits: every well's true siRNA gets a logit bonus so the plates look like a
model's output (argmax accuracy printed), groups and plate rotations drawn at random in the RxRx1
layout.
Times ``assign`` and ``greedy_balance`` per plate with the plate restriction off (all 1108 classes)
and on (the plate's 277), and ``postprocess_predictions`` end to end (rotation inference included).

    python benchmarks/postprocess.py            # prints a summary and appends to BENCHMARKS.md
    python benchmarks/postprocess.py --experiments 2 --no-append   # quick look
"""

from __future__ import annotations

import argparse
import time

import _report
import numpy as np
import pandas as pd
import scipy

from deepnoise_tf import plate_design, postprocess
from deepnoise_tf.constants import NUM_PLATE_GROUPS, NUM_SIRNAS, SIRNAS_PER_PLATE


def synthetic_test_set(rng, num_experiments, signal, scale):
    """Table, float32 well logits [N, 1108], true siRNAs, the plate design (RxRx1's order) and the
    rotation (group of plate 1) per experiment."""
    groups = np.empty(NUM_SIRNAS, dtype=np.int64)
    members = rng.permutation(NUM_SIRNAS).reshape(NUM_PLATE_GROUPS, SIRNAS_PER_PLATE)
    members = members[np.argsort(members.min(axis=1))]  # groups numbered by smallest member
    for group, ids in enumerate(members):
        groups[ids] = group
    rotations = rng.integers(0, NUM_PLATE_GROUPS, size=num_experiments)
    rows, truths, well_logits = [], [], []
    for experiment, g1 in enumerate(rotations):
        for plate in range(1, NUM_PLATE_GROUPS + 1):
            truth = rng.permutation(members[(g1 + plate - 1) % NUM_PLATE_GROUPS])
            logits = rng.normal(size=(len(truth), NUM_SIRNAS))
            logits[np.arange(len(truth)), truth] += signal
            well_logits.append((logits * scale).astype(np.float32))
            truths.append(truth)
            rows += [(f"SYN-{experiment:02d}", plate)] * len(truth)
    table = pd.DataFrame(rows, columns=["experiment", "plate"])
    design = plate_design.cyclic_design(groups, range(NUM_PLATE_GROUPS), NUM_PLATE_GROUPS)
    return table, np.concatenate(well_logits), np.concatenate(truths), design, rotations


def time_per_plate(function, plates):
    """Total seconds and predictions of ``function(logits, mask)`` over all plates."""
    predictions, start = [], time.perf_counter()
    for logits, mask in plates:
        predictions.append(function(logits, mask))
    return time.perf_counter() - start, np.concatenate(predictions)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=18)
    parser.add_argument("--signal", type=float, default=4.0, help="logit bonus of the true siRNA")
    parser.add_argument("--scale", type=float, default=5.0, help="logit scale (temperature)")
    parser.add_argument("--seed", type=int, default=0)
    _report.add_output_arguments(parser)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    table, logits, truth, design, rotations = synthetic_test_set(
        rng, args.experiments, args.signal, args.scale
    )
    plate_rows = {
        key: np.asarray(rows)
        for key, rows in table.groupby(["experiment", "plate"]).indices.items()
    }
    unrestricted = [(logits[rows], None) for rows in plate_rows.values()]
    restricted = [
        (
            logits[rows],
            design.candidate_mask((rotations[int(experiment[4:])] + plate - 1) % NUM_PLATE_GROUPS),
        )
        for (experiment, plate), rows in plate_rows.items()
    ]
    order = np.concatenate(list(plate_rows.values()))
    num_plates = len(plate_rows)
    print(f"{len(table)} wells, {num_plates} plates, {NUM_SIRNAS} classes", flush=True)

    results = {}
    load = _report.load_average()
    accuracies = {"argmax": float(np.mean(np.argmax(logits, axis=1) == truth))}
    for name, function, plates in [
        ("assign, all 1108 classes", postprocess.assign, unrestricted),
        ("assign, plate group (277)", postprocess.assign, restricted),
        ("greedy_balance, all 1108 classes", postprocess.greedy_balance, unrestricted),
        ("greedy_balance, plate group (277)", postprocess.greedy_balance, restricted),
    ]:
        seconds, prediction = time_per_plate(function, plates)
        results[name] = seconds
        accuracies[name] = float(np.mean(prediction == truth[order]))
        print(
            f"{name}: {seconds:.2f} s ({1e3 * seconds / num_plates:.1f} ms/plate), "
            f"accuracy {accuracies[name]:.4f}",
            flush=True,
        )
    start = time.perf_counter()
    prediction = postprocess.postprocess_predictions(table, logits, "assign", design)
    name = "postprocess_predictions(assign, inferred rotation)"
    results[name] = time.perf_counter() - start
    accuracies[name] = float(np.mean(prediction == truth))
    print(f"{name}: {results[name]:.2f} s, accuracy {accuracies[name]:.4f}", flush=True)

    rows = [
        (name, f"{seconds:.2f}", f"{1e3 * seconds / num_plates:.1f}", f"{accuracies[name]:.4f}")
        for name, seconds in results.items()
    ]
    summary = (
        f"postprocess: {len(table)} wells / {num_plates} plates: "
        + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in results.items())
        + f" (argmax accuracy {accuracies['argmax']:.4f})"
    )
    bullets = [
        f"- load average {load} (1/5/15 min, at start; 2 shared cores)",
        f"- data: {args.experiments} experiments x 4 plates x 277 wells x {NUM_SIRNAS} classes, "
        f"synthetic log-probs (true-siRNA bonus {args.signal}, scale {args.scale}, seed {args.seed}); "
        f"argmax accuracy {accuracies['argmax']:.4f}",
    ]
    body = _report.table(("step", "total s", "ms/plate", "accuracy"), rows)
    title = f"Post-processing ({_report.timestamp()})"
    versions = {"numpy": np.__version__, "scipy": scipy.__version__}
    _report.publish(args, title, bullets, body, script=__file__, argv=argv, versions=versions)
    print(summary)


if __name__ == "__main__":
    main()
