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
    parent = start_pipeline_run(cfg, "pipeline")
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
    assert {"lineage/params.yaml", "lineage/dvc.lock", "lineage/manifest.json",
            "lineage/resolved_params.yaml"} <= lineage
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


def test_parent_from_environment_dirty_tree_and_prefect_id(project: Path, sqlite_uri: str,
                                                          client: MlflowClient,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_cfg(sqlite_uri)
    parent = start_pipeline_run(cfg, "pipeline")
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
    parent = start_pipeline_run(cfg, "pipeline")

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
    parent = start_pipeline_run(cfg, "pipeline")
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

    own = start_pipeline_run(cfg, "still-running")  # this process is alive: never swept
    swept = sweep_stale_runs(cfg, older_than_s=3600)
    assert swept == [hung.info.run_id]
    assert client.get_run(hung.info.run_id).info.status == "FAILED"
    assert client.get_run(own).info.status == "RUNNING"
    assert live.metrics == {}
    end_pipeline_run(own, "FINISHED", cfg=cfg)
