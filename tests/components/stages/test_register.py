"""Stage ``register`` against a real sqlite MLflow store: versions, lineage, gate, aliases."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.errors import PipelineError
from components.stage_api import StagePaths
from components.stages.register import collect_metrics
from components.stages.runner import run_stage, stage_function
from components.tracking.runs import start_pipeline_run
from tests.components.tracking.helpers import (
    aliases,
    fresh_store,
    git,
    make_cfg,
    migrated_store,
    project,
    register_candidate,
    write_metrics,
)

__all__ = ["migrated_store", "project"]  # fixtures: a migrated empty MLflow db, a git project
GATE = {"gate": {"metric": "linear_val_top1", "min_value": 0.5, "min_improvement": 0.01,
                 "max_transfer_drop": 0.05}}


@pytest.fixture
def store(tmp_path: Path, migrated_store: Path) -> str:
    return fresh_store(migrated_store, tmp_path / "mlflow.db")


def test_collect_metrics_merges_stage_files(tmp_path: Path) -> None:
    write_metrics(tmp_path, "linear-eval", {"linear_val_top1": 0.7, "note": "text"})
    write_metrics(tmp_path, "pretrain", {"final_loss": 3.2, "linear_val_top1": 0.1})
    write_metrics(tmp_path, "ingest", {"data.digits.train_count": 1000})  # not the encoder's
    paths = StagePaths(tmp_path / "data", tmp_path / "outputs")
    assert collect_metrics(paths) == {
        "linear_val_top1": 0.7, "final_loss": 3.2, "pretrain.linear_val_top1": 0.1}
    (tmp_path / "outputs" / "finetune").mkdir()
    (tmp_path / "outputs" / "finetune" / "metrics.json").write_text("{")
    with pytest.raises(PipelineError, match="finetune/metrics.json"):
        collect_metrics(paths)


def test_gate_decides_champion_challenger_and_previous(project: Path, store: str) -> None:
    uri = store
    cfg = make_cfg(uri, registry=GATE)
    client = MlflowClient(uri, uri)

    first = register_candidate(project, cfg, {"linear_val_top1": 0.70, "transfer_digits_val_top1": 0.9})
    assert first.metrics["promoted"] == 1.0
    assert aliases(client) == {"champion": "1", "challenger": "1"}

    better = register_candidate(project, cfg, {"linear_val_top1": 0.75, "transfer_digits_val_top1": 0.88},
                                seed=1)
    assert better.tags["gate"] == "passed"
    assert aliases(client) == {"champion": "2", "challenger": "2", "previous-champion": "1"}

    worse = register_candidate(project, cfg, {"linear_val_top1": 0.80, "transfer_digits_val_top1": 0.5},
                               seed=2)  # better headline, but transfer collapses
    assert worse.metrics["promoted"] == 0.0
    assert "transfer_digits_val_top1" in worse.tags["gate_reason"]
    assert aliases(client) == {"champion": "2", "challenger": "3", "previous-champion": "1"}

    # the register run records the decision; the version carries metrics and lineage
    experiment = client.get_experiment_by_name("test").experiment_id
    (run,) = client.search_runs([experiment], "tags.registered_version = '3'")
    assert run.info.run_name == "register" and run.data.metrics["promoted"] == 0.0
    assert run.data.tags["gate"] == "refused"
    version = client.get_model_version("simclr-encoder", "3")
    assert version.run_id == run.info.run_id
    tags = version.tags
    assert float(tags["metric.linear_val_top1"]) == 0.80
    assert tags["gate"] == "refused" and "transfer" in tags["gate_reason"]
    assert tags["git_commit"] == git(project, "rev-parse", "HEAD")
    assert tags["params_digest"] == cfg.digest()
    assert tags["ray_run_name"] == "ray-run-2"
    assert tags["data_content_hash"] == "c0ffee"
    assert tags["data.fashion-mnist.content_hash"] == "c0ffee"
    (pretrain,) = client.search_runs(
        [experiment], f"tags.`artifact_sha256.encoder.pt` = '{tags['encoder_sha256']}'")
    assert tags["pretrain_run_id"] == pretrain.info.run_id
    assert tags["inference_model_uri"].startswith("models:/m-")
    assert "linear_val_top1=0.8000" in version.description


def test_rerun_with_unchanged_inputs_reuses_the_version(project: Path, store: str) -> None:
    uri = store
    cfg = make_cfg(uri, registry=GATE)
    first = register_candidate(project, cfg, {"linear_val_top1": 0.70})
    again = run_stage(cfg, "register")  # same encoder.pt, same metrics.json
    assert again.tags["registered_version"] == first.tags["registered_version"] == "1"
    assert again.metrics["promoted"] == 1.0 and "already the champion" in again.tags["gate_reason"]
    client = MlflowClient(uri, uri)
    assert len(client.search_model_versions("name = 'simclr-encoder'")) == 1
    assert aliases(client) == {"champion": "1", "challenger": "1"}


def test_first_version_below_min_value_is_only_challenger(project: Path, store: str) -> None:
    uri = store
    cfg = make_cfg(uri, registry=GATE)
    result = register_candidate(project, cfg, {"linear_val_top1": 0.2})
    assert result.metrics["promoted"] == 0.0 and "below min_value" in result.tags["gate_reason"]
    assert aliases(MlflowClient(uri, uri)) == {"challenger": "1"}


def test_failed_register_registers_nothing(project: Path, store: str) -> None:
    uri = store
    cfg = make_cfg(uri)
    parent = start_pipeline_run(cfg, "pipeline")
    write_metrics(project, "linear-eval", {"linear_val_top1": 0.9})  # but no encoder checkpoint
    with pytest.raises(PipelineError, match="encoder.pt"):
        run_stage(cfg, "register", parent_run_id=parent)
    client = MlflowClient(uri, uri)
    assert client.search_registered_models() == []
    assert client.get_run(parent).info.status == "FAILED"


def test_register_outside_tracking_is_refused(project: Path, store: str) -> None:
    with pytest.raises(PipelineError, match="simclr register"):
        stage_function("register")(make_cfg(store))
    assert not (project / "outputs" / "register" / "metrics.json").exists()
