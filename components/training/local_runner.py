"""Single-process runner of the pretraining loop: no Ray, one rank, the caller's device.

For benchmarks, proxy sweeps and study trials that want the pipeline's exact training (same
model, data order, augmentation streams, step, schedule, monitor) without Ray's start-up.
With ``checkpoint_dir`` it writes ``<checkpoint_dir>/<run name>/epoch-NNNNN/`` like the Ray
runner and resumes from the newest one; without, nothing is written. A caller with its own
checkpoint store (a Ray Tune trial) passes ``restored`` (the state to resume from) and
``report`` (called with every epoch's metrics and, on checkpoint epochs, the state) instead.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from components.config import PipelineConfig
from components.data.store import CanonicalDataset
from components.training.checkpointing import (
    STATE_FILE,
    TrainingState,
    load_training_state,
    save_training_state,
)
from components.training.loop import (
    Hook,
    PretrainOutcome,
    Report,
    WorkerContext,
    run_name_for,
    train_simclr,
    validate,
)


def run_local_pretraining(
    cfg: PipelineConfig,
    dataset_path: str | Path,
    *,
    hooks: Sequence[Hook] = (),
    checkpoint_dir: str | Path | None = None,
    run_name: str | None = None,
    device: torch.device | str = "cpu",
    log_every: int = 0,
    restored: TrainingState | None = None,
    report: Report | None = None,
) -> PretrainOutcome:
    """Pretrain in this process; ``threads_per_worker`` (if set) fixes torch's thread count.

    ``restored``: resume from this state (else from the newest checkpoint in
    ``checkpoint_dir``, if any); ``report(metrics, state)``: also hand every epoch's metrics
    row (and the training state on checkpoint epochs, else None) to the caller. The state
    holds the live model's and optimiser's tensors: save it (or copy it) before returning.
    """
    dataset = CanonicalDataset(Path(dataset_path).resolve())
    validate(cfg, dataset, world=1)
    name = run_name or run_name_for(cfg, dataset.content_hash)
    run_dir = Path(checkpoint_dir).resolve() / name if checkpoint_dir is not None else None
    restored_path = None if restored is not None else _newest_checkpoint(run_dir)
    if restored_path is not None:
        restored = load_training_state(restored_path)
    if cfg.pretrain.threads_per_worker:
        torch.set_num_threads(cfg.pretrain.threads_per_worker)
    latest: dict[str, object] = {"path": restored_path,
                                 "model": restored.model if restored else None}

    def keep(metrics: dict[str, float], state: TrainingState | None) -> None:
        if state is not None:
            if run_dir is not None:
                latest["path"] = run_dir / f"epoch-{state.epoch:05d}"
                save_training_state(latest["path"], state)
            latest["model"] = {k: v.detach().cpu().clone() for k, v in state.model.items()}
        if report is not None:
            report(metrics, state)

    start = time.perf_counter()
    worker = WorkerContext(rank=0, world=1, device=torch.device(device), report=keep,
                           restored=restored, run_name=name)
    history = train_simclr(cfg, dataset.root, worker, hooks=hooks, log_every=log_every)
    return PretrainOutcome(
        run_name=name, storage_path=str(run_dir.parent) if run_dir else "",
        checkpoint_path=str(latest["path"] or ""), model_state=latest["model"],  # type: ignore[arg-type]
        history=history, wall_time_s=time.perf_counter() - start,
    )


def _newest_checkpoint(run_dir: Path | None) -> Path | None:
    if run_dir is None or not run_dir.is_dir():
        return None
    done = sorted(p for p in run_dir.glob("epoch-*") if (p / STATE_FILE).is_file())
    return done[-1] if done else None
