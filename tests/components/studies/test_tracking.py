"""A study's MLflow runs on a real sqlite store: one parent, one child per trial, found again
by a restart, nothing logged twice."""

from __future__ import annotations

import uuid
from pathlib import Path

from mlflow import MlflowClient

from components.config import load_config
from components.studies.grids import study_named
from components.studies.plan import StudyPlan
from components.studies.report import TrialRecord
from components.studies.tracking import (
    ROLE_TAG,
    STATUS_TAG,
    complete_trial_run,
    finish_study_run,
    log_epochs,
    logged_steps,
    open_study_run,
    trial_run,
)
from components.tracking.runs import PID_TAG, Tracker

ROOT = Path(__file__).resolve().parents[3]
HISTORY = [{"epoch": 1.0, "step": 4.0, "loss": 5.0, "contrastive_acc": 0.1, "lr": 0.5},
           {"epoch": 2.0, "step": 8.0, "loss": 4.0, "contrastive_acc": 0.2, "lr": 0.1}]


def setup(uri: str):
    cfg = load_config(ROOT / "params.yaml", "tiny", ["study.scale=smoke",
                                                      f"tracking.tracking_uri={uri}",
                                                      f"tracking.experiment={uuid.uuid4().hex}"])
    return cfg, StudyPlan.of(study_named("temperature"), cfg, "c" * 64), Tracker.from_config(cfg)


def test_a_restart_reopens_the_parent_and_finds_the_children(session_tracking_uri: str) -> None:
    cfg, plan, tracker = setup(session_tracking_uri)
    runs = open_study_run(tracker, plan, cfg, ROOT, preset="tiny", overrides=["seed=1"])
    client = tracker.client
    parent = client.get_run(runs.parent_run_id)
    assert parent.info.run_name.startswith("study temperature · smoke · ")
    assert parent.data.tags[ROLE_TAG] == "study" and parent.data.params["seed"] == "0"
    assert "`seed=1`" in parent.data.tags["mlflow.note.content"]
    item = plan.trials[0]
    child = trial_run(runs, client, item.trial.name, item.overrides, item.config)
    client.set_terminated(runs.parent_run_id, "KILLED")  # as a stopped study leaves it
    again = open_study_run(tracker, plan, cfg, ROOT)
    assert again == runs and client.get_run(runs.parent_run_id).info.status == "RUNNING"
    assert trial_run(again, client, item.trial.name, item.overrides, item.config) == child
    other = trial_run(again, client, plan.trials[1].trial.name, plan.trials[1].overrides, None)
    assert other != child
    run = client.get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == runs.parent_run_id
    assert run.data.params["override.pretrain.temperature"] == "0.1"
    assert run.data.params["pretrain.temperature"] == "0.1"
    assert run.data.tags[PID_TAG].isdigit()


def test_a_trial_is_logged_once_with_its_curves(session_tracking_uri: str, tmp_path: Path) -> None:
    cfg, plan, tracker = setup(session_tracking_uri)
    runs = open_study_run(tracker, plan, cfg, ROOT)
    client = MlflowClient(session_tracking_uri)
    item = plan.trials[0]
    child = trial_run(runs, client, item.trial.name, item.overrides, item.config)
    assert logged_steps(client, child) == -1
    assert log_epochs(client, child, HISTORY[:1]) == 4  # live, as the Tune callback logs
    record = TrialRecord(item.trial, "finished", {"linear_val_top1": 0.9, "epochs_trained": 2.0,
                                                  "images_probe_val": 144.0}, HISTORY)
    for _ in range(2):  # the callback, then the runner's closing pass
        assert complete_trial_run(runs, client, record, item.config) == child
    run = client.get_run(child)
    assert run.info.status == "FINISHED" and run.data.tags[STATUS_TAG] == "finished"
    assert [(m.step, m.value) for m in client.get_metric_history(child, "loss")] == [(4, 5.0),
                                                                                     (8, 4.0)]
    assert [(m.step, m.value) for m in client.get_metric_history(child, "linear_val_top1")] \
        == [(8, 0.9)]  # the summary at the history's last step
    assert run.data.params["epochs_trained"] == "2" and run.data.params["images_probe_val"] == "144"
    diverged = TrialRecord(plan.trials[1].trial, "diverged", {"diverged": 1.0}, error="non-finite")
    run = client.get_run(complete_trial_run(runs, client, diverged))
    assert run.info.status == "FINISHED" and run.data.tags[STATUS_TAG] == "diverged"
    assert run.data.tags["error"] == "non-finite"
    table = tmp_path / "results.md"
    table.write_text("| a |\n")
    finish_study_run(runs, client, "FINISHED", files=[table], metrics={"best_linear_val_top1": 0.9},
                     tags={"best_cell": "tau=0.1, l2 norm"})
    parent = client.get_run(runs.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_linear_val_top1"] == 0.9
    assert [a.path for a in client.list_artifacts(runs.parent_run_id, "study")] == ["study/results.md"]
