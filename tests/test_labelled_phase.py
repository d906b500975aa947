"""The labelled-only phase before the consistency loss (paper, Discussion): where each scale starts
it, and that the model trained from a config gets it (the weight itself: tests/test_schedules.py)."""

import pytest
from conftest import tiny_config

from deepnoise_tf import config as config_lib
from deepnoise_tf import factory, finetuning, scales, schedules


@pytest.mark.parametrize("name", ["model3_mean_teacher.py", "deepnoise.py"])
def test_paper_and_cpu_scale_start_the_consistency_after_a_quarter_of_the_schedule(name):
    paper = config_lib.load(f"configs/{name}")
    cpu = config_lib.load(f"configs/{name}:cpu")
    for config in (paper, cpu):
        schedule = schedules.run_schedule(config)
        start = schedule.consistency_start_epoch
        assert start == config.train.epochs / 4 > 0
        assert start < schedule.lr_boundaries[0]  # consistency on at the first lr
    assert (
        schedules.run_schedule(paper).consistency_start_epoch,
        schedules.run_schedule(cpu).consistency_start_epoch,
    ) == (40.0, 8.0)
    default = config_lib.default_config()
    assert schedules.run_schedule(default).consistency_start_epoch == 40.0


def test_ablation_scales_and_fine_tuning_keep_their_own_start():
    cpu = scales.apply_ablation_scale(config_lib.load("configs/model3_mean_teacher.py:cpu"), "cpu")
    assert schedules.run_schedule(cpu).consistency_start_epoch == 8.0  # cpu_scale's
    morphology = scales.apply_ablation_scale(
        config_lib.load("configs/model3_mean_teacher.py:cpu"), "cpu_morphology"
    )
    # measured, docs/ablation.md
    assert schedules.run_schedule(morphology).consistency_start_epoch == 32.0
    # Fine-tuning starts from a pretrained teacher: consistency (ramped) from its first step.
    config = config_lib.load("configs/model3_mean_teacher.py")
    cell = finetuning.cell_type_config(config, "U2OS")
    assert schedules.run_schedule(cell).consistency_start_epoch == 0.0
    assert schedules.run_schedule(config).consistency_start_epoch == 40.0  # a copy


def test_the_built_model_trains_on_labels_alone_before_the_start(tiny_data):
    model = factory.build_model(tiny_config(*tiny_data, **{"model.width": 0.0625}), 3)
    assert model.consistency_start_epoch == 8.0
    weights = [
        float(schedules.consistency_weight(epoch, 100.0, model.rampup_epochs, 8.0))
        for epoch in (0.0, 7.99, 8.0, 10.0)
    ]
    assert weights[0] == weights[1] == 0.0 and 0.0 < weights[2] < weights[3] == 100.0
