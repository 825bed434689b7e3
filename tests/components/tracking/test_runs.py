"""tracked_stage, pipeline runs and the sweep against a real sqlite MLflow store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from components.stage_api import StageResult
from components.tracking.runs import (
    end_pipeline_run,
    resolve_tracking_uri,
    start_pipeline_run,
    sweep_stale_runs,
    tracked_stage,
)
from tests.components.tracking.helpers import git, make_cfg


def _stage(tmp: Path):
    def run(run_id):
        out = tmp / "outputs" / "demo"
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({"acc": 0.5}))
        (out / "plots").mkdir(exist_ok=True)
        (out / "plots" / "a.txt").write_text("plot")
        return StageResult(metrics={"acc": 0.5, "n": 3}, artifacts=[out / "metrics.json", out / "plots"],
                           tags={"custom": "yes"},
                           history=[{"epoch": 1, "step": 5, "loss": 2.0},
                                    {"epoch": 2, "step": 10, "loss": 1.0}])
    return run


def _experiment_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("test")
    return client.search_runs([experiment.experiment_id])


def test_tracking_uri_resolution(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_tracking_uri(make_cfg("sqlite:///x.db")) == "sqlite:///x.db"
    cfg = make_cfg(None)
    assert resolve_tracking_uri(cfg) == f"sqlite:///{project.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert resolve_tracking_uri(cfg) == "http://127.0.0.1:1"


def test_child_run_under_parent_logs_everything(project: Path, sqlite_uri: str,
                                                client: MlflowClient) -> None:
    cfg = make_cfg(sqlite_uri)
    parent = start_pipeline_run(cfg)
    result = tracked_stage(cfg, "demo", _stage(project), parent_run_id=parent)
    end_pipeline_run(parent, "FINISHED", cfg=cfg)

    assert result.metrics["acc"] == 0.5
    children = [r for r in _experiment_runs(client) if r.info.run_id != parent]
    assert len(children) == 1
    run = children[0]
    assert run.info.run_name == "demo" and run.info.status == "FINISHED"
    assert run.data.tags[MLFLOW_PARENT_RUN_ID] == parent
    assert client.get_run(parent).info.status == "FINISHED"
    # params: the whole flattened config
    assert run.data.params["pretrain.optim.base_lr"] == str(cfg.pretrain.optim.base_lr)
    assert run.data.params["model.width"] == "0.25"
    assert len(run.data.params) == len(cfg.flat())
    # metrics and history as steps
    assert run.data.metrics["acc"] == 0.5 and run.data.metrics["n"] == 3
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(5, 2.0), (10, 1.0)]
    # artifacts: outputs, lineage files, resolved config
    listed = {a.path for a in client.list_artifacts(run.info.run_id, "outputs")}
    assert listed == {"outputs/metrics.json", "outputs/plots"}
    lineage = {a.path for a in client.list_artifacts(run.info.run_id, "lineage")}
    assert {"lineage/params.yaml", "lineage/dvc.lock", "lineage/manifests",
            "lineage/resolved_params.yaml"} <= lineage
    manifests = "lineage/manifests/datasets/fashion-mnist"  # each manifest under its own name
    assert [a.path for a in client.list_artifacts(run.info.run_id, manifests)] == [
        f"{manifests}/manifest.json"]
    # tags: the stage's own + lineage
    tags = run.data.tags
    assert tags["custom"] == "yes"
    assert tags["git_commit"] == git(project, "rev-parse", "HEAD")
    assert tags["git_dirty"] == "false"
    assert tags["data.fashion-mnist.content_hash"] == "c0ffee"
    assert len(tags["dvc.ingest"]) == 16
    assert tags["params_digest"] == cfg.digest()
    assert tags["artifact_sha256.metrics.json"]
    assert "prefect_flow_run_id" not in tags
    # MLflow's own Source and git fields
    assert tags["mlflow.source.name"] == "simclr demo" and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.git.commit"] == tags["git_commit"]
    assert tags["mlflow.source.git.branch"] == git(project, "rev-parse", "--abbrev-ref", "HEAD")


def test_summaries_sit_at_the_final_step_and_counters_are_params(project: Path, sqlite_uri: str,
                                                                client: MlflowClient) -> None:
    """Charts never show a summary as the first point; epochs, image counts are params."""
    history = [{"epoch": 1, "step": 5, "contrastive_acc": 0.45, "resumed_from": 0},
               {"epoch": 2, "step": 10, "contrastive_acc": 0.5}]
    result = StageResult(metrics={"contrastive_acc": 0.5, "epochs": 2, "images_linear": 100},
                         timings={"resumed_from": 0, "wall_time_s": 1.5}, history=history)
    tracked_stage(make_cfg(sqlite_uri), "demo", lambda run_id: result)
    (run,) = _experiment_runs(client)
    points = client.get_metric_history(run.info.run_id, "contrastive_acc")
    assert {(m.step, m.value) for m in points} == {(5, 0.45), (10, 0.5)}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "wall_time_s")] == [10]
    assert not {"epochs", "images_linear", "resumed_from"} & set(run.data.metrics)
    params = run.data.params
    assert (params["epochs"], params["images_linear"], params["resumed_from"]) == ("2", "100", "0")


def test_stage_runs_record_the_data_sets_they_read(project: Path, sqlite_uri: str,
                                                   client: MlflowClient) -> None:
    cfg = make_cfg(sqlite_uri)
    tracked_stage(cfg, "pretrain", lambda run_id: StageResult())
    tracked_stage(cfg, "linear-eval", lambda run_id: StageResult())
    runs = {run.info.run_name: run for run in _experiment_runs(client)}

    def inputs(name: str) -> dict[str, tuple[str, str]]:
        return {d.dataset.name: (d.dataset.digest, d.tags[0].value)
                for d in runs[name].inputs.dataset_inputs}

    assert inputs("pretrain") == {"fashion-mnist/train": ("c0ffee", "training")}
    assert inputs("linear-eval") == {"fashion-mnist/train": ("c0ffee", "training"),
                                     "fashion-mnist/test": ("c0ffee", "evaluation")}


def test_pipeline_run_is_named_described_and_ends_with_the_headline(
        project: Path, sqlite_uri: str, client: MlflowClient) -> None:
    import re

    from components.tracking.runs import PIPELINE_SOURCE, Tracker, finish_pipeline_run

    cfg = make_cfg(sqlite_uri)
    tracker = Tracker.from_config(cfg)
    parent = start_pipeline_run(cfg, tracker, preset="tiny", overrides=["seed=1"],
                                stages=["pretrain", "linear-eval", "report"],
                                launched_by="Prefect flow run brave-fox")
    outputs = project / "outputs"
    for stage, metrics in {"pretrain": {"final_loss": 3.1, "pretrain_monitor_knn_top1": 0.4,
                                        "epochs": 2.0},
                           "linear-eval": {"linear_val_top1": 0.7, "linear_top1": 0.69,
                                           "knn_top1": 0.6, "images_linear": 900.0},
                           "register": {"registered_version": 4.0, "promoted": 1.0}}.items():
        (outputs / stage).mkdir(parents=True)
        (outputs / stage / "metrics.json").write_text(json.dumps(metrics))
    (outputs / "report").mkdir()
    (outputs / "report" / "results.md").write_text("| metric | SimCLR |\n")
    (outputs / "pretrain" / "loss.png").write_bytes(b"png")
    (outputs / "linear-eval" / "confusion.png").write_bytes(b"png")
    finish_pipeline_run(parent, cfg, tracker, "FINISHED", project)

    run = client.get_run(parent)
    assert re.fullmatch(rf"\d{{4}}-\d\d-\d\d \d\d:\d\d · {cfg.digest()[:8]}", run.info.run_name)
    note = run.data.tags["mlflow.note.content"]
    assert "pretrain, linear-eval, report" in note and "tiny" in note and "`seed=1`" in note
    assert "brave-fox" in note and cfg.digest() in note
    assert run.data.tags["mlflow.source.name"] == PIPELINE_SOURCE
    assert run.data.tags["mlflow.source.git.commit"] == git(project, "rev-parse", "HEAD")
    assert run.data.metrics == {"final_loss": 3.1, "pretrain_monitor_knn_top1": 0.4,
                                "linear_val_top1": 0.7, "linear_top1": 0.69, "knn_top1": 0.6,
                                "registered_version": 4.0, "promoted": 1.0}
    listed = {a.path for folder in ("results", "plots/pretrain", "plots/linear-eval",
                                    "lineage/after")
              for a in client.list_artifacts(parent, folder)}
    assert {"results/results.md", "plots/pretrain/loss.png", "plots/linear-eval/confusion.png",
            "lineage/after/dvc.lock", "lineage/after/manifests"} <= listed
    assert {(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs} == {
        ("fashion-mnist/train", "c0ffee"), ("fashion-mnist/test", "c0ffee")}
    assert run.info.status == "FINISHED"


def test_parent_from_environment_dirty_tree_and_prefect_id(project: Path, sqlite_uri: str,
                                                          client: MlflowClient,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_cfg(sqlite_uri)
    parent = start_pipeline_run(cfg)
    (project / "params.yaml").write_text("seed: 1\n")  # uncommitted change
    monkeypatch.setenv("SIMCLR_PARENT_RUN_ID", parent)
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "flow-run-123")
    tracked_stage(cfg, "demo", _stage(project))
    child = next(r for r in _experiment_runs(client) if r.info.run_id != parent)
    assert child.data.tags[MLFLOW_PARENT_RUN_ID] == parent
    assert child.data.tags["git_dirty"] == "true"
    assert child.data.tags["prefect_flow_run_id"] == "flow-run-123"


def test_standalone_run_without_git(tmp_path: Path, sqlite_uri: str, client: MlflowClient,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIMCLR_PARENT_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    tracked_stage(make_cfg(sqlite_uri), "demo", lambda run_id: StageResult(metrics={"x": 1.0}))
    (run,) = _experiment_runs(client)
    assert MLFLOW_PARENT_RUN_ID not in run.data.tags
    assert "git_commit" not in run.data.tags and run.info.status == "FINISHED"


def test_failing_stage_fails_child_and_parent(project: Path, sqlite_uri: str,
                                              client: MlflowClient) -> None:
    cfg = make_cfg(sqlite_uri)
    parent = start_pipeline_run(cfg)

    def broken(run_id):
        raise ValueError("boom in stage")

    with pytest.raises(ValueError, match="boom in stage"):
        tracked_stage(cfg, "broken", broken, parent_run_id=parent)
    child = next(r for r in _experiment_runs(client) if r.info.run_id != parent)
    assert child.info.status == "FAILED"
    assert "ValueError: boom in stage" in child.data.tags["error"]
    assert client.get_run(parent).info.status == "FAILED"
    assert "broken" in client.get_run(parent).data.tags["error"]
    end_pipeline_run(parent, "FAILED", cfg=cfg)  # what the orchestrator then does
    assert client.get_run(parent).info.status == "FAILED"


def test_retried_stage_lets_the_pipeline_finish(project: Path, sqlite_uri: str,
                                                client: MlflowClient) -> None:
    cfg = make_cfg(sqlite_uri)
    parent = start_pipeline_run(cfg)
    attempts = []

    def flaky(run_id):
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("transient")
        return StageResult(metrics={"ok": 1.0})

    with pytest.raises(ConnectionError):
        tracked_stage(cfg, "flaky", flaky, parent_run_id=parent)
    tracked_stage(cfg, "flaky", flaky, parent_run_id=parent)  # the orchestrator's retry
    end_pipeline_run(parent, "FINISHED", cfg=cfg)
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.tags["recovered"] == "true"
    statuses = sorted(r.info.status for r in _experiment_runs(client) if r.info.run_id != parent)
    assert statuses == ["FAILED", "FINISHED"]


_KILLED_CHILD = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    from components.stage_api import StageResult
    from components.tracking.runs import tracked_stage
    from tests.components.tracking.helpers import make_cfg

    def hang(run_id):
        print("started", flush=True)
        time.sleep(600)
        return StageResult()

    tracked_stage(make_cfg({uri!r}), "hang", hang)
""")


def test_killed_process_leaves_running_run_that_sweep_fails(project: Path, sqlite_uri: str,
                                                            client: MlflowClient) -> None:
    cfg = make_cfg(sqlite_uri)
    repo = str(Path(__file__).resolve().parents[3])
    script = _KILLED_CHILD.format(root=repo, uri=sqlite_uri)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             cwd=project, env={**os.environ, "PYTHONPATH": repo})
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "started"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    live = tracked_stage(cfg, "live", lambda run_id: StageResult())  # FINISHED, untouched
    (hung,) = [r for r in _experiment_runs(client) if r.info.run_name == "hang"]
    assert hung.info.status == "RUNNING"

    own = start_pipeline_run(cfg, run_name="still-running")  # this process is alive: never swept
    swept = sweep_stale_runs(cfg, older_than_s=3600)
    assert swept == [hung.info.run_id]
    assert client.get_run(hung.info.run_id).info.status == "FAILED"
    assert client.get_run(own).info.status == "RUNNING"
    assert live.metrics == {}
    end_pipeline_run(own, "FINISHED", cfg=cfg)
