"""Stage ``register``: the pretrained encoder -> a new MLflow model version, gated promotion.

Reads ``outputs/pretrain/encoder.pt`` (``save_encoder`` format) and every
``outputs/<stage>/metrics.json``; logs the encoder (fine-tunable checkpoint copy + pt2 inference
copy) into the stage's MLflow run, registers it under ``cfg.registry.model_name`` with a handful
of tags (:data:`VERSION_TAGS`: the gate's decision and metric, git commit, data hash, run links),
its metrics on the logged model and the encoder's details (architecture, input, Ray run, config
digest) as the logged model's params, points ``challenger`` at it, then applies the promotion gate
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
from components.stage_api import StageContext, StagePaths, StageResult
from components.tracking.gate import GateDecision, paired_test_metric
from components.tracking.headline import collect_metrics, model_metrics
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
# A version's tags (besides gate/gate_reason, set after the gate, promoted_by and
# inference_model_uri): the decision's inputs and the links, nothing else
VERSION_TAGS = ("gate_metric", "gate_metric_value", "git_commit", "git_dirty",
                "data_content_hash", "pretrain_run_id", "register_run_id", "encoder_sha256")


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
    lineage = lineage_tags(cfg, Path.cwd())
    candidate = model_metrics(metrics)  # the logged model's metrics (counters are not metrics)
    tags = {
        "gate_metric": gate.metric,
        "gate_metric_value": (f"{candidate[gate.metric]:.4f}" if gate.metric in candidate
                              else "missing"),
        "git_commit": lineage.get("git_commit", ""),
        "git_dirty": lineage.get("git_dirty", ""),
        "data_content_hash": str(meta.get("dataset_content_hash", "")),
        "pretrain_run_id": pretrain_run or "",
        "register_run_id": run_id,
        "encoder_sha256": encoder_sha,
    }
    details = {  # the logged model's params: what the encoder is and where it came from
        "arch": spec.model.arch if hasattr(spec.model, "arch") else str(spec.model),
        "feature_dim": str(getattr(encoder, "feature_dim", "")),
        "input": f"float32 (B,{spec.in_channels},{spec.image_size},{spec.image_size}) in [0,1]",
        "dataset": str(meta.get("dataset", "")),
        "ray_run_name": str(meta.get("ray_run_name", "")),
        "encoder_config_digest": str(meta.get("config_digest", "")),
        "gate_metric_test": paired_test_metric(gate.metric),
        **{k: v for k, v in lineage.items()
           if k in ("params_digest", "prefect_flow_run_id") or k.startswith("data.")},
    }
    headline = ", ".join(f"{k}={metrics[k]:.4f}" for k in sorted(metrics)
                         if k in (gate.metric, details["gate_metric_test"])
                         or k.startswith(("linear_", "finetune_", "transfer_")))
    description = (f"SimCLR encoder ({details['arch']}, {details['feature_dim']}-d features) "
                   f"pretrained by Ray run {details['ray_run_name'] or '?'} at git "
                   f"{tags['git_commit'][:12] or '?'}; {headline or 'no evaluation metrics'}")

    existing = _same_candidate(client, name, encoder_sha, candidate)
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
        client.log_model_params(logged.model_id, details)
        version = register_version(client, name, logged, run_id, candidate, tags, description)
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
        if (version.tags.get("encoder_sha256") == sha256
                and model_metrics(version_metrics(client, version) or {}) == metrics):
            return version
    return None


def _pretrain_run_id(client: mlflow.MlflowClient, experiment_id: str, sha256: str) -> str | None:
    """The newest FINISHED pretrain run that logged this exact encoder file."""
    runs = client.search_runs(
        [experiment_id],
        f"tags.`artifact_sha256.encoder.pt` = '{sha256}' and attributes.status = 'FINISHED'",
        max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None
