"""Fine-tuning with the pipeline's pseudo labels (paper Fig. 5B), and the pipeline's paper-scale
pseudo-label and TTA defaults (docs/pipeline.md). The end-to-end check is
tests/test_pipeline.py::test_stages_run_in_order_and_write_their_files."""

import os

import numpy as np

from deepnoise_tf import config as config_lib
from deepnoise_tf import finetuning, pipeline_config, training

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "deepnoise.py")


def test_finetuning_hands_the_pseudo_labels_to_every_cell_types_training(tmp_path, monkeypatch):
    config = config_lib.cpu_scale(config_lib.default_config())
    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    (pretrained / "config.json").write_text(config_lib.to_json(config))
    calls = []

    def record_run(cell_config, folder, **options):
        calls.append((cell_config.data.cell_types, options))
        return {}

    monkeypatch.setattr(training, "run", record_run)
    monkeypatch.setattr(finetuning, "save_pretrained_backbone", lambda *args: "checkpoint")
    labels = (["HUVEC-01_1_B02", "U2OS-01_2_C03"], np.array([5, 7]))
    finetuning.run(
        config,
        str(tmp_path / "out"),
        init_workdir=str(pretrained),
        cell_types="HUVEC,U2OS",
        pseudo_labels=labels,
    )
    assert [tuple(cell_types) for cell_types, _ in calls] == [("HUVEC",), ("U2OS",)]
    for _, options in calls:
        assert options["pseudo_labels"] is labels
        assert options["record"]["pseudo_label_wells"] == 2
    calls.clear()
    finetuning.run(config, str(tmp_path / "plain"), init_workdir=str(pretrained), cell_types="RPE")
    assert calls[0][1]["pseudo_labels"] is None
    assert calls[0][1]["record"]["pseudo_label_wells"] == 0


def test_finetuning_folder_follows_the_rounds_behind_its_pseudo_labels():
    config = config_lib.load(CONFIG + ":cpu")
    keys = {pipeline_config.finetune_settings_key(config)}
    with config.unlocked():
        config.pipeline.pseudo_label_rounds += 1
    keys.add(pipeline_config.finetune_settings_key(config))
    with config.unlocked():
        config.mean_teacher.enabled = False  # no unlabelled stream: no pseudo labels
    keys.add(pipeline_config.finetune_settings_key(config))
    assert len(keys) == 3  # each names another fine-tuning folder (stages.finetune_stage)


def test_paper_scale_refreshes_often_and_predicts_with_test_time_views():
    paper = config_lib.load(CONFIG)
    cpu = config_lib.load(CONFIG + ":cpu")
    assert paper.pipeline.tta is True and cpu.pipeline.tta is False
    # A refresh possible every 10 epochs, in the second half of the paper's 160 (docs/pipeline.md).
    assert paper.pipeline.retrain_epochs == 10
    assert paper.pipeline.pseudo_label_rounds * paper.pipeline.retrain_epochs == 80
    assert paper.pipeline.train_epochs == 80 and paper.train.schedule_epochs == 160
    assert (cpu.pipeline.pseudo_label_rounds, cpu.pipeline.retrain_epochs) == (2, 6)
    assert paper.data.test_controls and cpu.data.test_controls
