"""Ray Train worker body: thin glue between Ray Train and :func:`components.training.loop.train_simclr`.

Reads the rank, world size and device from Ray's context, restores the newest checkpoint Ray
hands the group (a restart after a failure, or a rerun of the same run name), runs the loop,
and reports every epoch through ``ray.train.report`` (a barrier): rank 0 writes the training
state into a temporary folder that Ray copies to the run's storage on checkpoint epochs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Any

import torch

from components.training.checkpointing import (
    TrainingState,
    load_training_state,
    save_training_state,
)
from components.training.loop import Hook, Report, WorkerContext, train_simclr


@dataclass(frozen=True)
class PretrainJob:
    """Everything a worker needs; plain data (and picklable hooks) so it ships to any cluster."""

    config: dict[str, Any]  # PipelineConfig.model_dump(mode="json")
    dataset_path: str  # absolute path of the canonical data set, readable by every worker
    run_name: str
    hooks: tuple[Hook, ...] = field(default_factory=tuple)
    log_every: int = 0  # steps between progress lines on rank 0; 0: one in mid-epoch


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """``TorchTrainer``'s ``train_loop_per_worker``; ``loop_config = {"job": PretrainJob}``."""
    import ray.train
    import ray.train.torch

    from components.config import config_from_dict

    job: PretrainJob = loop_config["job"]
    cfg = config_from_dict(job.config)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.set_num_threads(cfg.pretrain.threads_per_worker or max(1, int(cfg.ray.cpus_per_worker)))
    restored = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            restored = load_training_state(folder)
    worker = WorkerContext(rank=rank, world=context.get_world_size(),
                           device=ray.train.torch.get_device(), report=_reporter(rank),
                           restored=restored, run_name=job.run_name)
    train_simclr(cfg, job.dataset_path, worker, hooks=job.hooks, log_every=job.log_every)


def _reporter(rank: int) -> Report:
    """Rank 0 writes the checkpoint; every rank reports (a barrier) so all stay in step."""
    import ray.train

    def report(metrics: dict[str, float], state: TrainingState | None) -> None:
        if state is None or rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory(prefix="simclr-ckpt-") as folder:
            save_training_state(folder, state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                             checkpoint_dir_name=f"epoch-{state.epoch:05d}")

    return report
