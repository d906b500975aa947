"""Fast checks of the benchmark scripts' pieces (their speed is measured by running them, not here)."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the scripts import their shared module as `_report`

import _report  # noqa: E402
import jobs  # noqa: E402
import keras_profile  # noqa: E402
import pipeline  # noqa: E402
import projection  # noqa: E402
import train  # noqa: E402


def test_report_appends_a_titled_section_with_a_table(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    body = _report.table(("a", "b"), [(1, "x"), (2, "y")])
    _report.append_section(output, "First", ["- note"], body)
    _report.append_section(output, "Second", [], ["text"])
    text = output.read_text()
    assert text.startswith("# Benchmarks\n")
    assert text.count("# Benchmarks") == 1
    assert "## First\n\n- note\n\n| a | b |\n|---|---|\n| 1 | x |\n| 2 | y |\n" in text
    assert text.index("## First") < text.index("## Second")


def test_report_command_and_load_average():
    assert _report.command("/x/benchmarks/train.py", ["--steps", "2"]) == (
        "python benchmarks/train.py --steps 2"
    )
    assert _report.command("model.py", [], ["KERAS_BACKEND=jax"]).startswith("KERAS_BACKEND=jax ")
    values = _report.load_average().split("/")
    assert len(values) == 3 and all(math.isfinite(float(value)) for value in values)


def test_time_calls_counts_warmup_and_timed_calls():
    calls = []
    first, per_call = _report.time_calls(lambda: calls.append(1), steps=3, warmup=2)
    assert len(calls) == 5 and first >= 0 and per_call >= 0


def test_time_interleaved_alternates_rotates_and_takes_medians():
    """A fake clock advanced by each call: the timed seconds are exactly the calls' own costs."""
    now = [0.0]
    order = []
    # Mode b gets one slow call (load hitting its third round); the median ignores it.
    costs = {
        "a": iter([9, 9, 1, 1, 1, 1, 1]),
        "b": iter([9, 9, 2, 2, 50, 2, 2]),
        "c": iter([9] + [3] * 6),
    }

    def call(name):
        def run():
            order.append(name)
            now[0] += next(costs[name])

        return run

    first, seconds = _report.time_interleaved(
        {name: call(name) for name in "abc"}, rounds=4, warmup=2, clock=lambda: now[0]
    )
    assert first == {"a": 9, "b": 9, "c": 9}
    assert order[:6] == list("abcabc")  # first calls, then one more warm-up call each
    assert order[6:] == list("abcbcacababc")  # every round runs each once, rotated
    assert seconds == {"a": [1, 1, 1, 1], "b": [2, 2, 50, 2], "c": [3, 3, 3, 3]}
    assert _report.median(seconds["b"]) == 2
    assert _report.median([4.0, 1.0, 3.0]) == 3.0
    assert _report.median([4.0, 1.0, 3.0, 2.0]) == 2.5


def test_train_step_rows_take_median_rates_and_same_round_ratios():
    prepared = {
        mode: {"mode": mode, "batch": 32, "pipeline_images_per_s": 640.0}
        for mode in ("deepnoise", "plain")
    }
    seconds = {"deepnoise": [0.2, 0.4, 0.2, 0.8], "plain": [0.1, 0.2, 0.1, 0.2]}
    rows = {
        row["mode"]: row
        for row in train.step_rows(prepared, {"deepnoise": 5.0, "plain": 3.0}, seconds, "1/2/3")
    }
    # Medians 0.3 s and 0.15 s; the same-round ratios are 2, 2, 2, 4 -> median 2.
    assert rows["deepnoise"]["step_images_per_s"] == pytest.approx(32 / 0.3)
    assert rows["plain"]["step_images_per_s"] == pytest.approx(32 / 0.15)
    assert rows["deepnoise"]["plain_ratio"] == pytest.approx(2.0)
    assert rows["plain"]["plain_ratio"] == pytest.approx(1.0)
    assert rows["deepnoise"]["feed_ratio"] == pytest.approx(640 * 0.3 / 32)
    assert rows["deepnoise"]["first_step_s"] == 5.0 and rows["plain"]["load"] == "1/2/3"
    alone = train.step_rows({"plain": prepared["plain"]}, {"plain": 3.0}, {"plain": [0.1]}, "")
    assert alone[0]["step_images_per_s"] == pytest.approx(320.0)


def test_train_settings_and_mixed_batch():
    assert train.parse_setting("512:1.0:4") == (512, 1.0, 4)
    batch = {"label": tf.constant([3, 4, 5, 6]), "image": tf.zeros([4, 2, 2, 6], tf.uint8)}
    mixed = train.as_mixed_batch(batch)
    np.testing.assert_array_equal(mixed["label"], [3, 4, -1, -1])
    assert mixed["image"] is batch["image"]


def test_train_config_follows_the_mode_and_scales_the_shuffle_buffer(tiny_data):
    data_dir, builder = tiny_data
    config = train.benchmark_config(data_dir, builder, 16, 0.125, 8, "plain")
    assert not config.mean_teacher.enabled
    assert (config.data.image_size, config.model.width, config.train.batch_size) == (16, 0.125, 8)
    # tiny: 2 cell types x 1 experiment x 4 plates x 7 wells = 56 train wells; 2048 * 56 / 36,515
    assert config.data.shuffle_buffer == 3
    config = train.benchmark_config(data_dir, builder, 16, 0.125, 8, "deepnoise")
    assert config.mean_teacher.enabled


def test_png_path_reads_and_normalizes_the_six_channels(release_source):
    root, truth = release_source
    sites = pipeline.site_png_paths(root)
    assert len(sites) == len(truth)
    statistics = pipeline.plate_statistics(sites)
    pipeline._set_statistics(statistics)
    paths, plate = sites[0]
    image = pipeline.load_png_site(sites[0])
    from PIL import Image

    raw = np.stack([np.asarray(Image.open(path)) for path in paths], axis=-1)
    mean, std = statistics[plate]
    assert image.shape == raw.shape and image.dtype == np.float32
    np.testing.assert_allclose(image, (raw - mean) / std, rtol=1e-6)


@pytest.mark.parametrize(
    "name, kind",
    [
        (
            "xception/block5_sepconv1/separable_conv2d/depthwise:DepthwiseConv2dNative",
            "depthwise conv",
        ),
        ("xception/block5_sepconv1/separable_conv2d:_MklNativeConv2D", "pointwise conv"),
        ("gradient_tape/xception/block5_sepconv1_bn/moments/mean:Mean", "batch norm"),
        ("xception/block1_conv1/convolution:_MklNativeConv2D", "other conv"),
        ("xception/block3_pool/MaxPool2d:_MklNativeMaxPool", "max pool"),
    ],
)
def test_profile_op_kinds(name, kind):
    op_name, op_type = name.rsplit(":", 1)
    assert keras_profile.kind_of(op_name, op_type) == kind


def test_torch_xception_matches_the_keras_topology():
    torch = pytest.importorskip("torch")
    import torch_step

    from deepnoise_tf import models

    width, size = 0.25, 64
    network = torch_step.Xception(width)
    keras_model = models.build("xception", (size, size, 6), width=width)
    trainable = sum(int(np.prod(v.shape)) for v in keras_model.trainable_weights)
    assert sum(p.numel() for p in network.parameters()) == trainable
    embedding = network(torch.zeros(2, 6, size, size))
    assert tuple(embedding.shape) == (2, models.embedding_dim(keras_model))


def test_decode_after_choosing_the_site_gives_the_training_batches(tiny_data):
    """The pipeline prototype of benchmarks/pipeline.py delivers exactly data.training_dataset's."""
    data_dir, builder = tiny_data
    prototype = iter(pipeline.tf_pipeline(data_dir, builder, 8, "choose first", 16))
    reference = iter(pipeline.tf_pipeline(data_dir, builder, 8, "none", 16))
    for _ in range(10):  # several epochs of the tiny data
        ours, theirs = next(prototype), next(reference)
        assert set(ours) == set(theirs)
        for key in ours:
            np.testing.assert_array_equal(ours[key].numpy(), theirs[key].numpy(), err_msg=key)


def test_projection_uses_measured_rates_and_a_same_card_wide_ratio_elsewhere():
    # By hand from the H200 rows of BENCHMARKS.md (train img/s): 489.2 / 288.6 and 771.2 / 502.4.
    expected_ratio = {"float32": 1.6951, "mixed_bfloat16": 1.5350}
    for precision, ratio in expected_ratio.items():
        assert projection.measured_wide_cost("train", precision) == pytest.approx(ratio, abs=1e-4)
    # A measured row is used as it is, whatever the ratio argument says.
    assert projection.model_rate("H200", "train", "xception_wide", "float32", 99.0) == 288.6
    # The H100 has no wide row: Xception's 370 and 644 img/s over the H200 ratio (218 and 420,
    # the rows printed in BENCHMARKS.md's H100 projection).
    assert projection.model_rate("H100", "train", "xception_wide", "float32", 1.6951) == (
        pytest.approx(218.3, abs=0.1)
    )
    assert projection.model_rate("H100", "train", "xception_wide", "mixed_bfloat16", 1.5350) == (
        pytest.approx(419.5, abs=0.1)
    )


def test_projection_schedule_hours_by_hand():
    # 10 epochs in all of 1000 rows at 100 plain rows/s: 10 s per epoch of plain rows; 2
    # labelled-only epochs at cost 1 (20 s), 5 consistency epochs at cost 2 (100 s), 3 rounds x 1
    # epoch at cost 2 (60 s); validation 50 sites x 10 epochs at 200/s (2.5 s); 4 evaluations x
    # (50 + 150) sites x 8 views at 200/s (32 s).
    parts = projection.schedule_hours(
        100.0, 200.0, rows_per_epoch=1000, epochs=10, labelled_only_epochs=2, retrain_epochs=1,
        rounds=3, deepnoise_cost=2.0, labelled_only_cost=1.0, validation_sites=50,
        test_sites=150, tta_views=8,
    )  # fmt: skip
    expected = {
        "labelled_only": 20.0, "consistency": 100.0, "pseudo_label_rounds": 60.0,
        "validation": 2.5, "round_evaluation": 32.0,
    }  # fmt: skip
    assert parts == pytest.approx({part: seconds / 3600 for part, seconds in expected.items()})
    with pytest.raises(ValueError, match="cannot hold"):  # rounds longer than the schedule
        projection.schedule_hours(
            100.0, 200.0, rows_per_epoch=1000, epochs=10, labelled_only_epochs=2,
            retrain_epochs=3, rounds=3, deepnoise_cost=2.0, labelled_only_cost=1.0,
            validation_sites=50, test_sites=150, tta_views=8,
        )  # fmt: skip


def test_jobs_reads_train_rates_and_runs_every_layout_as_train_py(tmp_path):
    """`jobs.py` parses the plain rate `train.py` prints, and its commands are train.py's flags."""
    line = ("train_benchmark mode=plain size=64 width=0.125 batch=32 step_images_per_s=301.25 "
            "first_step_s=3.0 pipeline_images_per_s=900 feed_ratio=3.0 load=1.00/1.00/1.00")  # fmt: skip
    assert jobs.images_per_second("noise\n" + line + "\ntrain_benchmark_summary x") == 301.25
    with pytest.raises(RuntimeError, match="no plain-step rate"):
        jobs.images_per_second("train_benchmark mode=deepnoise step_images_per_s=3")
    arguments = jobs.argparse.Namespace(setting="64:0.125:32", steps=5, data_root=str(tmp_path))
    command = jobs.train_command(arguments, 1)
    parsed = {flag: value for flag, value in zip(command[2::2], command[3::2], strict=False)}
    assert parsed["--intra_op_threads"] == "1" and parsed["--modes"] == "plain"
    assert parsed["--settings"] == "64:0.125:32" and command[-1] == "--no_append"
