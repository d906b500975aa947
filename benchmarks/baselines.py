"""The two non-deep baselines on the ablation presets: linear floor vs CellProfiler-style features.

    python benchmarks/baselines.py --presets ablation,ablation_morphology --report_split val

Generates each preset's synthetic data under `--data_root` (once), configures the baselines as the
ablation does (`ablation_steps.step_config` of `norm_plate` at the preset's scale, then
`with_data`), and reports the per-well treatment accuracy (argmax over the siRNAs, and after the
plate prior) with the time of each fit. docs/feature_baseline.md quotes the result.
"""

from __future__ import annotations

import argparse
import time

import _report
import numpy as np

from deepnoise_tf import ablation_steps, baselines, evaluation, features, synthetic

SCALE_OF_PRESET = {"ablation": "cpu", "ablation_morphology": "cpu_morphology"}
BASELINES = {
    "linear_floor": baselines.linear_floor_logits,
    "feature_baseline": features.feature_baseline_logits,
}


def preset_config(preset: str, data_root: str):
    """The config the ablation's floor reads for `preset`, on data generated under `data_root`."""
    data_dir = f"{data_root}/{preset}"
    builder = synthetic.prepare_tfds(data_dir, preset=preset, layout="release")
    step = next(step for step in ablation_steps.STEPS if step.name == "norm_plate")
    config = ablation_steps.step_config(step, scale=SCALE_OF_PRESET[preset])
    return ablation_steps.with_data(config, data_dir, builder)


def accuracies(wells, logits) -> tuple[float, float, int]:
    """(argmax accuracy, plate-prior accuracy, wells) over the treatment wells."""
    table = evaluation.well_predictions(wells, logits, method="assign")
    labels = table["label"].to_numpy()
    return (
        float(np.mean(table["raw_prediction"].to_numpy() == labels)),
        float(np.mean(table["prediction"].to_numpy() == labels)),
        len(table),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="ablation,ablation_morphology")
    parser.add_argument("--report_split", default="val", choices=baselines.REPORT_SPLITS)
    parser.add_argument("--data_root", default="/tmp/deepnoise_baselines")
    _report.add_output_arguments(parser)
    args = parser.parse_args(argv)
    presets = _report.names(parser, args.presets, tuple(SCALE_OF_PRESET), "presets")
    rows = []
    for preset in presets:
        config = preset_config(preset, args.data_root)
        for name, baseline in BASELINES.items():
            start = time.perf_counter()
            wells, logits = baseline(config, report_split=args.report_split)
            seconds = time.perf_counter() - start
            raw, prior, count = accuracies(wells, logits)
            rows.append((preset, name, str(count), f"{raw:.3f}", f"{prior:.3f}", f"{seconds:.0f}"))
            print(" ".join(rows[-1]), flush=True)
    header = ("preset", "baseline", "wells", "accuracy", "with plate prior", "seconds")
    body = _report.table(header, rows)
    print("\n".join(body))
    bullets = [f"- load average (1/5/15 min): {_report.load_average()}"]
    title = f"Baselines on {args.report_split} wells ({_report.timestamp()})"
    _report.publish(args, title, bullets, body, script=__file__, argv=argv)


if __name__ == "__main__":
    main()
