"""Stage ``pretrain``: SimCLR on Ray Train workers -> encoder, metrics, history, loss plot.

Reads the canonical data set of ``cfg.data.source``; writes ``outputs/pretrain/encoder.pt``
(``save_encoder`` format), ``metrics.json``, ``history.json`` (one row per epoch) and
``loss.png``. Ray checkpoints live under ``cfg.ray.storage_path`` (outside DVC's outs), in a
run named after the data hash and the training parameters: rerunning resumes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from components.config import PipelineConfig
from components.data.store import CanonicalDataset
from components.stages.common import StagePaths, StageResult
from components.training.ray_driver import PretrainOutcome, run_pretraining

log = logging.getLogger(__name__)


def run(cfg: PipelineConfig) -> StageResult:
    paths = StagePaths.of(cfg)
    dataset = CanonicalDataset(paths.dataset(cfg.data.source))
    outcome = run_pretraining(cfg, dataset.root)
    out_dir = paths.stage_dir("pretrain")
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder_path = write_encoder(out_dir / "encoder.pt", cfg, dataset, outcome)
    metrics = summary_metrics(cfg, outcome)
    _write_json(out_dir / "metrics.json", metrics)
    _write_json(out_dir / "history.json", outcome.history)
    plot_path = plot_history(outcome.history, out_dir / "loss.png")
    log.info("pretrain: %s", ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return StageResult(
        metrics=metrics,
        artifacts=[encoder_path, out_dir / "metrics.json", out_dir / "history.json", plot_path],
        tags={"ray_run_name": outcome.run_name, "ray_storage_path": outcome.storage_path,
              "ray_checkpoint": outcome.checkpoint_path,
              "dataset_content_hash": dataset.content_hash},
        history=[dict(row) for row in outcome.history],
    )


def write_encoder(path: Path, cfg: PipelineConfig, dataset: CanonicalDataset,
                  outcome: PretrainOutcome) -> Path:
    """The trained encoder f (not the head) in the ``save_encoder`` format."""
    from components.models.checkpoint import save_encoder
    from components.models.encoder import build_encoder

    height, _, channels = dataset.image_shape
    encoder = build_encoder(cfg.model, in_channels=channels, image_size=height)
    prefix = "encoder."
    encoder.load_state_dict({k[len(prefix):]: v for k, v in outcome.model_state.items()
                             if k.startswith(prefix)})
    last = outcome.history[-1] if outcome.history else {}
    save_encoder(path, encoder, cfg.model, channels, height, meta={
        "stage": "pretrain", "ray_run_name": outcome.run_name,
        "dataset": dataset.name, "dataset_content_hash": dataset.content_hash,
        "epochs": last.get("epoch", 0), "step": last.get("step", 0),
        "config_digest": cfg.digest(), "seed": cfg.seed,
    })
    return path


def summary_metrics(cfg: PipelineConfig, outcome: PretrainOutcome) -> dict[str, float]:
    """Flat numbers for metrics.json / MLflow from the per-epoch history."""
    history = outcome.history
    last = history[-1] if history else {}
    knn = [row["knn_top1"] for row in history if "knn_top1" in row]
    fresh = [row for row in history if row.get("resumed_from", 0) == history[-1]["resumed_from"]] \
        if history else []
    metrics = {
        "final_loss": float(last.get("loss", float("nan"))),
        "contrastive_acc": float(last.get("contrastive_acc", float("nan"))),
        "images_per_s": float(sum(r["images_per_s"] for r in fresh) / max(len(fresh), 1)),
        "epochs": float(last.get("epoch", 0)),
        "steps": float(last.get("step", 0)),
        "train_time_s": float(sum(r["epoch_time_s"] for r in history)),
        "wall_time_s": float(outcome.wall_time_s),
        "resumed_from": float(last.get("resumed_from", 0)),
        "num_workers": float(cfg.ray.num_workers),
    }
    if knn:
        metrics["knn_top1"] = float(knn[-1])
    return metrics


def plot_history(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss (and kNN top-1 where measured) per epoch; a resume shows as a dotted line."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [row["epoch"] for row in history]
    ax.plot(epochs, [row["loss"] for row in history], marker="o", label="NT-Xent loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    for resumed in sorted({row.get("resumed_from", 0) for row in history} - {0}):
        ax.axvline(resumed, linestyle=":", color="grey", label=f"resumed after epoch {resumed}")
    knn = [(row["epoch"], row["knn_top1"]) for row in history if "knn_top1" in row]
    if knn:
        ax2 = ax.twinx()
        ax2.plot(*zip(*knn, strict=True), marker="s", color="tab:orange", label="kNN top-1")
        ax2.set_ylabel("kNN top-1")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left" if not knn else "lower left")
    ax.set_title("SimCLR pretraining")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
