"""Stage ``register`` against a real sqlite MLflow store: versions, lineage, gate, aliases."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.errors import PipelineError
from components.stage_api import StagePaths
from components.stages.register import VERSION_TAGS
from components.stages.runner import run_stage, stage_function
from components.tracking.headline import collect_metrics, headline_metrics, is_counter
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


def test_headline_metrics_and_counters(tmp_path: Path) -> None:
    write_metrics(tmp_path, "linear-eval", {"linear_val_top1": 0.7, "linear_top1": 0.69,
                                            "knn_top1": 0.6, "images_linear": 900, "l2_linear": 1e-4})
    write_metrics(tmp_path, "pretrain", {"final_loss": 3.2, "pretrain_monitor_knn_top1": 0.5,
                                         "epochs": 2, "num_workers": 2})
    write_metrics(tmp_path, "finetune", {"finetune_1pct_top1": 0.4, "epochs_finetune_1pct": 9})
    write_metrics(tmp_path, "register", {"registered_version": 3, "promoted": 1,
                                         "candidate.linear_top1": 0.69})
    paths = StagePaths(tmp_path / "data", tmp_path / "outputs")
    assert headline_metrics(paths) == {
        "linear_val_top1": 0.7, "linear_top1": 0.69, "knn_top1": 0.6, "finetune_1pct_top1": 0.4,
        "final_loss": 3.2, "pretrain_monitor_knn_top1": 0.5, "registered_version": 3.0,
        "promoted": 1.0}
    assert [is_counter(n) for n in ("epochs", "num_workers", "images_linear",
                                    "epochs_finetune_1pct", "candidate.steps_finetune_10pct",
                                    "final_loss", "l2_linear", "linear_top1")] == [
        True, True, True, True, True, False, False, False]


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
    # a handful of tags, the decision first among them; no metric.* flood
    assert set(tags) == {*VERSION_TAGS, "gate", "gate_reason", "inference_model_uri", "model_id"}
    assert tags["gate"] == "refused" and "transfer" in tags["gate_reason"]
    assert tags["gate_metric"] == "linear_val_top1" and tags["gate_metric_value"] == "0.8000"
    assert tags["git_commit"] == git(project, "rev-parse", "HEAD")
    assert tags["data_content_hash"] == "c0ffee"
    assert tags["register_run_id"] == run.info.run_id
    (pretrain,) = client.search_runs(
        [experiment], f"tags.`artifact_sha256.encoder.pt` = '{tags['encoder_sha256']}'")
    assert tags["pretrain_run_id"] == pretrain.info.run_id
    assert tags["inference_model_uri"].startswith("models:/m-")
    assert "linear_val_top1=0.8000" in version.description
    # metrics and the encoder's details on the logged model (MLflow 3's Models pages)
    logged = client.get_logged_model(version.tags["model_id"])
    assert {m.key: m.value for m in logged.metrics} == {
        "linear_val_top1": 0.80, "transfer_digits_val_top1": 0.5}
    assert logged.params["params_digest"] == cfg.digest()
    assert logged.params["ray_run_name"] == "ray-run-2"
    assert logged.params["data.fashion-mnist.content_hash"] == "c0ffee"
    assert logged.params["gate_metric_test"] == "linear_top1"


def test_the_gate_reads_old_metric_tags_of_versions_registered_before(project: Path,
                                                                      store: str) -> None:
    """A registry from before logged-model metrics: the champion's ``metric.*`` tags count."""
    cfg = make_cfg(store, registry=GATE)
    client = MlflowClient(store, store)
    client.create_registered_model("simclr-encoder")
    client.create_model_version("simclr-encoder", source=str(project),
                                tags={"metric.linear_val_top1": repr(0.9)})
    client.set_registered_model_alias("simclr-encoder", "champion", "1")
    result = register_candidate(project, cfg, {"linear_val_top1": 0.85})
    assert result.metrics["promoted"] == 0.0
    assert "does not beat champion's 0.9000" in result.tags["gate_reason"]


def test_rerun_with_unchanged_inputs_reuses_the_version(project: Path, store: str) -> None:
    uri = store
    cfg = make_cfg(uri, registry=GATE)
    first = register_candidate(project, cfg, {"linear_val_top1": 0.70, "images_linear": 500.0})
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
    parent = start_pipeline_run(cfg)
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
