"""Stage ``register``: the pretrained encoder -> a new MLflow model version, gated promotion.

Reads ``outputs/pretrain/encoder.pt`` (``save_encoder`` format) and every
``outputs/<stage>/metrics.json``; logs the encoder (fine-tunable checkpoint copy + pt2 inference
copy) into the stage's MLflow run, registers it under ``cfg.registry.model_name`` with the headline
metrics and lineage as tags, points ``challenger`` at it, then applies the promotion gate
(``cfg.registry.gate``): on a pass ``champion`` moves to it and the old champion becomes
``previous-champion``; otherwise no alias but ``challenger`` changes and the reason is recorded.
Rerunning it on the same encoder file with the same metrics reuses that version (no duplicate).
``outputs/register/metrics.json`` records the version (``registered_version``) and the gate's
decision (``promoted``: 1 or 0); the reason is the version's and the run's ``gate_reason`` tag.

Unlike the other stages this one needs MLflow: it runs tracked (``simclr register`` or the
Prefect flow) and logs into the run and tracker of its :class:`StageContext`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion

from components.config import PipelineConfig
from components.errors import PipelineError
from components.io import file_sha256
from components.stage_api import (
    EVALUATION_STAGES,
    StageContext,
    StagePaths,
    StageResult,
    read_metrics,
)
from components.tracking.gate import GateDecision, paired_test_metric
from components.tracking.lineage import lineage_tags
from components.tracking.registry import (
    CHAMPION,
    alias_version,
    gate_and_promote,
    log_encoder,
    register_version,
    version_metrics,
)

log = logging.getLogger(__name__)
CANDIDATE_STAGES = (*EVALUATION_STAGES, "report", "pretrain")  # the encoder's; evaluations first


def collect_metrics(paths: StagePaths) -> dict[str, float]:
    """Every number in the ``metrics.json`` of :data:`CANDIDATE_STAGES`; a name seen twice keeps
    the first (in stage order) and the later one is kept as ``<stage>.<name>``."""
    merged: dict[str, float] = {}
    for stage in CANDIDATE_STAGES:
        for key, value in read_metrics(paths.metrics_file(stage)).items():
            merged[key if key not in merged else f"{stage}.{key}"] = value
    return merged


def run(cfg: PipelineConfig, ctx: StageContext) -> StageResult:
    from components.models.checkpoint import load_encoder

    if ctx.run_id is None or ctx.tracker is None:
        raise PipelineError("stage register logs to MLflow: run it as `simclr register` "
                            "(or through the pipeline flow), not untracked")
    paths = StagePaths.of(cfg)
    checkpoint = paths.encoder
    encoder, spec = load_encoder(checkpoint, expect=cfg.model)
    metrics = collect_metrics(paths)
    tracker = ctx.tracker
    client, experiment_id = tracker.client, tracker.experiment_id
    name, gate = cfg.registry.model_name, cfg.registry.gate
    run_id = ctx.run_id

    encoder_sha = file_sha256(checkpoint)
    pretrain_run = _pretrain_run_id(client, experiment_id, encoder_sha)
    meta = spec.meta or {}
    tags = {k: v for k, v in lineage_tags(cfg, Path.cwd()).items()
            if k in ("git_commit", "git_dirty", "params_digest", "prefect_flow_run_id")
            or k.startswith("data.")}
    tags.update({
        "encoder_sha256": encoder_sha,
        "pretrain_run_id": pretrain_run or "",
        "register_run_id": run_id,
        "ray_run_name": str(meta.get("ray_run_name", "")),
        "data_content_hash": str(meta.get("dataset_content_hash", "")),
        "dataset": str(meta.get("dataset", "")),
        "encoder_config_digest": str(meta.get("config_digest", "")),
        "arch": spec.model.arch if hasattr(spec.model, "arch") else str(spec.model),
        "feature_dim": str(getattr(encoder, "feature_dim", "")),
        "input": f"float32 (B,{spec.in_channels},{spec.image_size},{spec.image_size}) in [0,1]",
        # which number decided (validation) and its test counterpart (reported only)
        "gate_metric": gate.metric,
        "gate_metric_test": paired_test_metric(gate.metric),
    })
    headline = ", ".join(f"{k}={metrics[k]:.4f}" for k in sorted(metrics)
                         if k in (gate.metric, tags["gate_metric_test"])
                         or k.startswith(("linear_", "finetune_", "transfer_")))
    description = (f"SimCLR encoder ({tags['arch']}, {tags['feature_dim']}-d features) pretrained "
                   f"by Ray run {tags['ray_run_name'] or '?'} at git {tags.get('git_commit', '?')[:12]}"
                   f"; {headline or 'no evaluation metrics'}")

    existing = _same_candidate(client, name, encoder_sha, metrics)
    if existing is not None:  # a rerun with unchanged inputs: reuse the version, gate again
        version = str(existing.version)
        log.info("register: encoder %s with these metrics is already version %s",
                 encoder_sha[:12], version)
        champion = alias_version(client, name, CHAMPION)
        if champion is not None and str(champion.version) == version:
            decision = GateDecision(True, f"version {version} is already the champion")
        else:
            decision = gate_and_promote(tracker, name, version, gate)
    else:
        logged = log_encoder(tracker, run_id, checkpoint, encoder, spec.in_channels, spec.image_size)
        version = register_version(client, name, logged, run_id, metrics, tags, description)
        try:
            decision = gate_and_promote(tracker, name, version, gate)
        except BaseException:
            client.delete_model_version(name, version)  # nothing half-registered is left behind
            raise
    client.set_model_version_tag(name, version, "gate", "passed" if decision.passed else "refused")
    client.set_model_version_tag(name, version, "gate_reason", decision.reason)
    verdict = "promoted to champion" if decision.passed else "kept as challenger"
    log.info("register: %s version %s %s: %s", name, version, verdict, decision.reason)
    return StageResult(
        metrics={"promoted": float(decision.passed), "registered_version": float(version),
                 **{f"candidate.{k}": v for k, v in metrics.items()}},
        tags={"registered_model": name, "registered_version": version,
              "gate": "passed" if decision.passed else "refused", "gate_reason": decision.reason,
              "model_uri": f"models:/{name}/{version}",
              "inference_model_uri": client.get_model_version(name, version).tags.get(
                  "inference_model_uri", "")},
    )


def _same_candidate(client: mlflow.MlflowClient, name: str, sha256: str,
                    metrics: dict[str, float]) -> ModelVersion | None:
    """An existing version of ``name`` with this exact encoder file and the same metrics."""
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.tags.get("encoder_sha256") == sha256 and version_metrics(version) == metrics:
            return version
    return None


def _pretrain_run_id(client: mlflow.MlflowClient, experiment_id: str, sha256: str) -> str | None:
    """The newest FINISHED pretrain run that logged this exact encoder file."""
    runs = client.search_runs(
        [experiment_id],
        f"tags.`artifact_sha256.encoder.pt` = '{sha256}' and attributes.status = 'FINISHED'",
        max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None
