"""Every stage of dvc.yaml through the flow on the tiny preset (digits), then a no-op second run."""

from __future__ import annotations

import pytest
import yaml
from mlflow import MlflowClient
from prefect.artifacts import Artifact

from flows.pipeline import ARTIFACT_KEY, RAN, SKIPPED, SOURCE_CHECK, simclr_pipeline
from tests.flows.conftest import project_with_store

pytestmark = [pytest.mark.slow, pytest.mark.ray]
TRANSFER = "data.transfer=[{kind: digits, path: null, name: digits}]"  # the transfer stage needs one


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api):
    yield from project_with_store(tmp_path_factory.mktemp("full") / "project")


def test_every_stage_runs_then_a_second_run_recomputes_nothing(project):
    # every stage but the source check, which runs first on every flow run (no outcome, no run)
    stages = [stage for stage in yaml.safe_load((project.root / "dvc.yaml").read_text())["stages"]
              if stage != SOURCE_CHECK]
    state = simclr_pipeline(project_dir=str(project.root), preset="tiny",
                            overrides=[TRANSFER], return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == dict.fromkeys(stages, RAN)

    client = MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("simclr").experiment_id
    (parent,) = client.search_runs([experiment], "tags.pipeline = 'true'")
    assert parent.info.status == "FINISHED"
    children = client.search_runs([experiment],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(run.data.tags["stage"] for run in children) == sorted(stages)
    # the parent compares with other runs: its name, headline metrics, results table, key plots
    assert " · " in parent.info.run_name and not parent.info.run_name.startswith("pipeline-")
    metrics = parent.data.metrics
    for name in ("linear_val_top1", "linear_top1", "knn_top1", "pretrain_monitor_knn_top1",
                 "finetune_10pct_val_top1", "finetune_10pct_top1", "supervised_10pct_top1",
                 "transfer_digits_top1", "registered_version", "promoted"):
        assert name in metrics, (name, sorted(metrics))
    assert metrics["registered_version"] == 1.0 and not any("." in name for name in metrics)
    register = next(run for run in children if run.data.tags["stage"] == "register")
    assert metrics["promoted"] == register.data.metrics["promoted"]
    assert {item.path for item in client.list_artifacts(parent.info.run_id, "results")} == {
        "results/results.md"}
    assert {item.path for item in client.list_artifacts(parent.info.run_id, "plots/pretrain")} == {
        "plots/pretrain/loss.png"}
    pretrain = next(run for run in children if run.data.tags["stage"] == "pretrain")
    assert "epochs" in pretrain.data.params and "epochs" not in pretrain.data.metrics

    results = (project.root / "outputs/report/results.md").read_text()
    artifact = Artifact.get(ARTIFACT_KEY)
    assert artifact.flow_run_id == state.state_details.flow_run_id
    assert results in artifact.data and parent.info.run_id in artifact.data

    lock = (project.root / "dvc.lock").read_text()
    second = simclr_pipeline(project_dir=str(project.root), preset="tiny",
                             overrides=[TRANSFER], return_state=True)
    assert second.is_completed(), second.message
    assert second.result() == dict.fromkeys(stages, SKIPPED)
    assert (project.root / "dvc.lock").read_text() == lock
