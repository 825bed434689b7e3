"""Stage ``pretrain``: SimCLR on Ray Train workers -> encoder, metrics, history, loss plot.

Reads the canonical data set of ``cfg.data.source``; writes ``outputs/pretrain/encoder.pt``
(``save_encoder`` format), ``metrics.json``, ``history.json`` (one row per
epoch, the same keys in every row), ``knn_monitor.json`` (the epochs the kNN monitor ran) and
``loss.png``. Ray checkpoints live under ``cfg.ray.storage_path`` (outside DVC's outs), in a
run named after the data hash and the training parameters: rerunning resumes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from components.config import PipelineConfig
from components.data.store import CanonicalDataset
from components.evaluation.plots import new_figure, save_figure
from components.io import write_json
from components.stage_api import StageContext, StagePaths, StageResult
from components.training.loop import MONITOR_METRIC
from components.training.ray_driver import PretrainOutcome, run_pretraining

log = logging.getLogger(__name__)
# history columns that differ between identical runs: MLflow only, never history.json
RUN_VARYING = ("images_per_s", "epoch_time_s", "epoch_cpu_s", "resumed_from")
HISTORY_FILE = "history.json"  # one row per epoch, every row the same keys (dvc plots needs that)
MONITOR_FILE = "knn_monitor.json"  # the kNN monitor's rows (measured every knn_every epochs)
MONITOR_COLUMNS = (MONITOR_METRIC,)  # always in MONITOR_FILE, even when measured every epoch


def split_history(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(history, monitor)``: the run-independent columns every row has, one row per epoch, and
    ``{"epoch", <column>...}`` rows for the epochs that measured the other columns (kNN top-1)."""
    rows = [{k: v for k, v in row.items() if k not in RUN_VARYING} for row in rows]
    every = set.intersection(*(set(row) for row in rows)) - set(MONITOR_COLUMNS) if rows else set()
    history = [{k: v for k, v in row.items() if k in every} for row in rows]
    monitor = [{"epoch": row["epoch"], **{k: v for k, v in row.items() if k not in every}}
               for row in rows if set(row) - every]
    return history, monitor


def run(cfg: PipelineConfig, ctx: StageContext) -> StageResult:
    paths = StagePaths.of(cfg)
    dataset = CanonicalDataset(paths.dataset(cfg.data.source))
    outcome = run_pretraining(cfg, dataset.root)
    out_dir = ctx.out
    encoder_path = write_encoder(out_dir / "encoder.pt", cfg, dataset, outcome)
    metrics, timings = summary_metrics(cfg, outcome)
    history, monitor = split_history(outcome.history)
    history_path = write_json(out_dir / HISTORY_FILE, history)
    monitor_path = write_json(out_dir / MONITOR_FILE, monitor)
    plot_path = plot_history(outcome.history, out_dir / "loss.png")
    log.debug("pretrain: %s", ", ".join(f"{k}={v:.4g}" for k, v in {**metrics, **timings}.items()))
    return StageResult(
        metrics=metrics, timings=timings,
        artifacts=[encoder_path, history_path, monitor_path, plot_path],
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


def summary_metrics(cfg: PipelineConfig, outcome: PretrainOutcome
                    ) -> tuple[dict[str, float], dict[str, float]]:
    """``(metrics, timings)`` from the per-epoch history: metrics.json gets the first (a function
    of the inputs), MLflow and the untracked timings file both."""
    history = outcome.history
    last = history[-1] if history else {}
    knn = [row[MONITOR_METRIC] for row in history if MONITOR_METRIC in row]
    fresh = [row for row in history if row.get("resumed_from", 0) == history[-1]["resumed_from"]] \
        if history else []
    metrics = {
        "final_loss": float(last.get("loss", float("nan"))),
        "contrastive_acc": float(last.get("contrastive_acc", float("nan"))),
        "epochs": float(last.get("epoch", 0)),
        "steps": float(last.get("step", 0)),
        "num_workers": float(cfg.ray.num_workers),
    }
    if knn:
        metrics[MONITOR_METRIC] = float(knn[-1])
    timings = {
        "mean_images_per_s": float(sum(r["images_per_s"] for r in fresh) / max(len(fresh), 1)),
        "train_time_s": float(sum(r["epoch_time_s"] for r in history)),
        "wall_time_s": float(outcome.wall_time_s),
        "resumed_from": float(last.get("resumed_from", 0)),
    }
    return metrics, timings


def plot_history(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss (and kNN top-1 where measured) per epoch; a resume shows as a dotted line."""
    fig, ax = new_figure(6, 4)
    epochs = [row["epoch"] for row in history]
    ax.plot(epochs, [row["loss"] for row in history], marker="o", label="NT-Xent loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    for resumed in sorted({row.get("resumed_from", 0) for row in history} - {0}):
        ax.axvline(resumed, linestyle=":", color="grey", label=f"resumed after epoch {resumed}")
    knn = [(row["epoch"], row[MONITOR_METRIC]) for row in history if MONITOR_METRIC in row]
    if knn:
        ax2 = ax.twinx()
        ax2.plot(*zip(*knn, strict=True), marker="s", color="tab:orange", label="kNN monitor top-1")
        ax2.set_ylabel("kNN monitor top-1")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left" if not knn else "lower left")
    ax.set_title("SimCLR pretraining")
    return save_figure(fig, path)
