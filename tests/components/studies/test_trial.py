"""One trial's body without Ray: the shared loop, the validation probes, checkpoints, summary.

The Tune trainable around it (:func:`study_trial`) runs under real Ray Tune in test_runner.py.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from ray import tune

from components.data.store import CanonicalDataset
from components.data.subsets import load_validation
from components.studies.grids import Trial, study_named
from components.studies.plan import StudyPlan
from components.studies.trial import (
    MODEL_FILE,
    SUMMARY_FILE,
    TrialJob,
    read_checkpoint,
    record_of,
    run_trial,
    study_job,
)
from components.training.checkpointing import save_training_state
from tests.components.studies.conftest import DigitsData

SHORT = {"pretrain.epochs": 2, "pretrain.max_images": 256, "pretrain.knn_every": 1}


def job_for(data: DigitsData, overrides: dict, probe_z: bool = False, name: str = "t") -> TrialJob:
    return TrialJob("test", name, 1, 1, data.cfg.model_dump(mode="json"), overrides,
                    str(data.dataset), str(data.subsets), probe_z)


def test_a_trial_trains_reports_every_epoch_and_scores_on_validation(digits_data: DigitsData):
    job = job_for(digits_data, SHORT)
    cfg = job.config()
    assert cfg.pretrain.knn_every == 0  # the monitor would query the test split
    seen = []
    summary, weights = run_trial(job, cfg, None, lambda m, s: seen.append((m["epoch"], s.epoch)))
    assert seen == [(1, 1), (2, 2)]  # the tiny preset checkpoints every epoch
    assert summary["status"] == "finished" and summary["error"] == ""
    metrics = summary["metrics"]
    val = load_validation(digits_data.subsets, CanonicalDataset(digits_data.dataset))
    assert metrics["images_probe_val"] == len(val)
    assert metrics["images_probe_fit"] == min(1000, 1437 - len(val))  # tiny: max_train_images
    assert 0.3 < metrics["linear_val_top1"] <= 1 and 0.3 < metrics["knn_val_top1"] <= 1
    assert metrics["l2_linear"] in cfg.evaluate.linear.l2_grid
    assert metrics["diverged"] == 0 and metrics["epochs_trained"] == 2
    assert metrics["pretrain_cpu_s"] > 0 and metrics["final_loss"] == summary["history"][-1]["loss"]
    assert not [k for k in metrics if k.endswith("_top1") and "_val_" not in k]  # no test score
    assert all("pretrain_monitor_knn_top1" not in row for row in summary["history"])
    assert {k.split(".")[0] for k in weights} == {"encoder", "head"}


def test_z_is_probed_for_the_head_study_and_is_h_without_a_head(digits_data: DigitsData):
    summary, _ = run_trial(job_for(digits_data, {**SHORT, "model.head_layers": 2}, True),
                           job_for(digits_data, {**SHORT, "model.head_layers": 2}).config(),
                           None, lambda m, s: None)
    assert 0 < summary["metrics"]["linear_z_val_top1"] <= 1
    assert "knn_z_val_top1" in summary["metrics"]
    job = job_for(digits_data, {**SHORT, "model.head_layers": 0}, True)
    metrics = run_trial(job, job.config(), None, lambda m, s: None)[0]["metrics"]
    assert metrics["linear_z_val_top1"] == metrics["linear_val_top1"]


def test_a_resumed_trial_ends_where_an_uninterrupted_one_does(digits_data: DigitsData):
    job = job_for(digits_data, SHORT)
    states = {}
    whole, weights = run_trial(job, job.config(), None,
                               lambda m, s: states.__setitem__(s.epoch, copy.deepcopy(s)))
    resumed, resumed_weights = run_trial(job, job.config(), states[1], lambda m, s: None)
    assert [row["resumed_from"] for row in resumed["history"]] == [0, 1]
    assert resumed["metrics"]["linear_val_top1"] == whole["metrics"]["linear_val_top1"]
    for key, value in weights.items():
        assert torch.equal(resumed_weights[key], value), key


def test_a_loss_that_is_not_finite_ends_the_trial_as_diverged(digits_data: DigitsData):
    job = job_for(digits_data, {**SHORT, "pretrain.optim.name": "sgd",
                                "pretrain.optim.base_lr": 1e12,
                                "pretrain.loss.l2_normalize": False})
    summary, weights = run_trial(job, job.config(), None, lambda m, s: None)
    assert summary["status"] == "diverged" and "non-finite" in summary["error"]
    assert weights is None and summary["metrics"]["diverged"] == 1
    assert "linear_val_top1" not in summary["metrics"]


def test_checkpoints_give_back_the_state_or_the_summary(digits_data: DigitsData, tmp_path: Path):
    """What Tune hands a restarted trial: a training state resumes it, a summary means done;
    :func:`record_of` reads the summary into the report's record."""
    assert read_checkpoint(None) == (None, None)
    job = job_for(digits_data, SHORT)
    states = {}
    summary, weights = run_trial(job, job.config(), None,
                                 lambda m, s: states.__setitem__(s.epoch, copy.deepcopy(s)))
    save_training_state(tmp_path / "epoch", states[1])
    state, none = read_checkpoint(tune.Checkpoint.from_directory(tmp_path / "epoch"))
    assert none is None and state.epoch == 1
    final = tmp_path / "final"
    final.mkdir()
    torch.save(weights, final / MODEL_FILE)
    import json

    (final / SUMMARY_FILE).write_text(json.dumps(summary))
    state, loaded = read_checkpoint(tune.Checkpoint.from_directory(final))
    assert state is None and loaded["metrics"] == pytest.approx(summary["metrics"])
    trial = Trial("t", ("x",), "", 0, {})
    record = record_of(trial, tune.Checkpoint.from_directory(final))
    assert record.status == "finished" and record.counts and len(record.history) == 2
    assert record_of(trial, None, "boom").status == "error"
    assert record_of(trial, None).status == "not run"


def test_the_job_of_a_trial_is_its_plan_entry(digits_data: DigitsData):
    """Every trial is handed the study's job (the base and all overrides) and its name; its
    configuration is the one the plan validated."""
    plan = StudyPlan.of(study_named("temperature"), digits_data.cfg, "")
    shared = study_job("temperature", digits_data.cfg.model_dump(mode="json"),
                       {item.trial.name: item.overrides for item in plan.trials}, "d", "s", False)
    job = TrialJob.of(plan.names[2], shared)
    assert (job.index, job.count, job.name) == (3, 4, plan.names[2])
    assert job.config() == plan.trials[2].config
