"""The SimCLR pretraining loop, independent of the engine that runs it (no Ray here).

:func:`train_simclr` is what every runner drives: the Ray Train worker
(``components.training.ray_worker``), the single process of
``components.training.local_runner`` (benchmarks, sweeps, study trials) and anything later.
It builds the model (identical initial weights on every rank; BatchNorm over the global batch
when there is more than one worker and ``model.global_bn``), restores a :class:`TrainingState`,
walks the data order of ``components.training.sampling``, runs :class:`TrainStep`, sums the
metrics, prints progress lines on rank 0 (epoch, step, loss, contrastive accuracy, lr, img/s,
ETA), runs the kNN monitor every ``pretrain.knn_every`` epochs and hands a metrics row (and,
every ``pretrain.checkpoint_every`` epochs and after the last, the training state) to the
runner's ``report``. With ``world > 1`` it expects ``torch.distributed`` to be initialised by
the runner and wraps the model in ``DistributedDataParallel``.

Hooks (:class:`Hook`) let callers observe or change a run without switches in the library:
``on_model_built(model)`` before the optimiser is built, ``on_epoch_end(end)`` after the epoch's
report. Tests use them for fault injection; they must pickle to reach Ray workers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.collectives import SharedMemorySum, SumFn, share_gradients_in_memory, shared_sum
from components.config import PipelineConfig
from components.data.store import CanonicalDataset
from components.errors import ConfigError
from components.logs import progress_log_format
from components.precision import resolve_precision
from components.training.checkpointing import TrainingState, capture_rng, restore_rng
from components.training.sampling import (
    epoch_permutation,
    local_batch_indices,
    step_generator,
    training_subset,
)

# pretrain.* keys that only change monitoring or speed, not the weights: editing them (or the
# ray section: workers, address, storage) after a crash still resumes the same run.
NOT_TRAINING_KEYS = ("checkpoint_every", "knn_every", "knn_k", "knn_images", "threads_per_worker")
# Sections whose values change what is trained; the run name digests them with the data hash.
TRAINING_SECTIONS = ("seed", "augment", "model", "pretrain")
# The kNN monitor's history column (a few thousand images): not linear-eval's full kNN ``knn_top1``
MONITOR_METRIC = "pretrain_monitor_knn_top1"

Report = Callable[[dict[str, float], TrainingState | None], None]


@dataclass(frozen=True)
class WorkerContext:
    """What a runner gives the loop: who this worker is and how to hand results back.

    ``report(metrics, state)`` is called once per epoch on every rank, with the training state
    on checkpoint epochs (else ``None``); under Ray it is a barrier. ``restored``: the state to
    resume from, or ``None`` for a fresh run.
    """

    rank: int
    world: int
    device: torch.device
    report: Report
    restored: TrainingState | None = None
    run_name: str = ""


@dataclass(frozen=True)
class EpochEnd:
    """Passed to :meth:`Hook.on_epoch_end`: ``epochs_done`` finished epochs, this rank."""

    rank: int
    world: int
    epochs_done: int
    step: int
    checkpointed: bool
    row: dict[str, Any]


class Hook:
    """Callbacks of a run; subclass and override what you need (instances must pickle)."""

    def on_model_built(self, model: nn.Module) -> None:
        """The SimCLR model, before it moves to the device and the optimiser is built."""

    def on_epoch_end(self, end: EpochEnd) -> None:
        """After the epoch's ``report`` (so after its checkpoint, on checkpoint epochs)."""


@dataclass
class PretrainOutcome:
    """What a runner hands back: the trained model's weights and the run's history."""

    run_name: str
    storage_path: str
    checkpoint_path: str
    model_state: dict[str, torch.Tensor]  # SimCLRModel state dict: encoder.* and head.*
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0  # the runner's call, engine overhead included
    ray_init_s: float = 0.0  # 0 when Ray was already connected (or not used)


def run_name_for(cfg: PipelineConfig, content_hash: str) -> str:
    """Deterministic run name: data content + every parameter that changes the training.

    The global batch order does not depend on the number of workers, so ``ray.*`` is left
    out: a run may resume on a different number of workers.
    """
    digest = cfg.digest(*TRAINING_SECTIONS,
                        exclude=tuple(f"pretrain.{key}" for key in NOT_TRAINING_KEYS))
    return f"pretrain-{content_hash[:12]}-{digest[:12]}"


def train_count(cfg: PipelineConfig, available: int) -> int:
    """Training images used: the split, capped at ``pretrain.max_images``."""
    cap = cfg.pretrain.max_images
    return min(available, cap) if cap else available


def validate(cfg: PipelineConfig, dataset: CanonicalDataset, world: int) -> None:
    """``ConfigError`` naming the key when the batch does not fit the workers or the data."""
    batch = cfg.pretrain.batch_size
    if batch % world:
        raise ConfigError(f"pretrain.batch_size: {batch} is not divisible by "
                          f"ray.num_workers={world}")
    if batch // world < 2:
        raise ConfigError(f"pretrain.batch_size: {batch} leaves fewer than 2 images per worker")
    n_train = train_count(cfg, len(dataset.split("train")))
    if n_train < batch:
        raise ConfigError(f"pretrain.batch_size: {batch} exceeds the {n_train} training images "
                          f"of {dataset.root}")


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:d}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def progress_logger() -> logging.Logger:
    """Rank 0's progress lines, with their own handler (Ray workers have no logging config)."""
    logger = logging.getLogger("components.training.progress")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(*progress_log_format()))  # no time under the flow
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def build_model(cfg: PipelineConfig, in_channels: int, image_size: int, world: int,
                device: torch.device) -> nn.Module:
    """The SimCLR model seeded by ``cfg.seed`` (equal on every rank), BN global if world > 1.

    On CPU the global BN statistics go through shared memory when all ranks share this host
    (:mod:`components.collectives`; building it is collective: every rank calls this).
    """
    from components.models.global_bn import convert_batchnorm, max_channels
    from components.models.simclr import build_simclr_model

    torch.manual_seed(cfg.seed)
    model = build_simclr_model(cfg.model, in_channels=in_channels, image_size=image_size)
    if world > 1 and cfg.model.global_bn:
        sum_over_ranks = (SharedMemorySum.for_process_group(2 * max_channels(model) + 1)
                          if device.type == "cpu" else None)
        model = convert_batchnorm(model, device.type, sum_over_ranks)
    return model


def shared_loss_sum(model: nn.Module, batch_size: int) -> SumFn | None:
    """The shared-memory sum for the loss's gather (both views of the global batch: batch_size
    x 2 x z dims), or None where the ranks do not share a host (collective)."""
    return shared_sum(batch_size * 2 * model.head.out_dim)


def train_simclr(cfg: PipelineConfig, dataset_path: str | Path, worker: WorkerContext,
                 hooks: Sequence[Hook] = (), log_every: int = 0) -> list[dict[str, Any]]:
    """Train ``cfg.pretrain.epochs`` epochs (from ``worker.restored`` on); the full history.

    ``log_every``: steps between progress lines on rank 0 (0: one in mid-epoch); every epoch
    ends with its ``done`` line (loss, accuracy, lr, img/s, kNN monitor, ETA) in place of the
    step line of its last step.
    """
    import torch.distributed as dist

    from components.augment import SimCLRAugment, to_float_tensor
    from components.optim import WarmupCosine, build_optimizer, peak_lr
    from components.training.monitor import knn_monitor
    from components.training.step import TrainStep

    pre, rank, world, device = cfg.pretrain, worker.rank, worker.world, worker.device
    logger = progress_logger()
    dataset = CanonicalDataset(dataset_path)
    train = dataset.split("train")
    height, _, channels = dataset.image_shape
    n_train = train_count(cfg, len(train))
    steps_per_epoch = n_train // pre.batch_size
    total_steps = steps_per_epoch * pre.epochs

    model = build_model(cfg, channels, height, world, device)
    for hook in hooks:
        hook.on_model_built(model)
    model = model.to(device)
    if pre.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, pre.optim, pre.batch_size)
    schedule = WarmupCosine.from_epochs(peak_lr(pre.optim, pre.batch_size),
                                        pre.optim.warmup_epochs, pre.epochs, steps_per_epoch)

    start_epoch, step, history = 0, 0, []
    if worker.restored is not None:
        state = worker.restored
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        restore_rng(state.rng)
        start_epoch, step, history = state.epoch, state.step, list(state.history)
        if rank == 0:
            logger.info("resuming run %s from epoch %d (step %d)", worker.run_name,
                        start_epoch, step)
    resumed_from = start_epoch

    net: nn.Module = model
    loss_sum: SumFn | None = None
    if world > 1:
        # Global BN keeps the BN buffers equal on every rank (same all-reduced statistics), so
        # DDP's per-forward broadcast of rank 0's buffers would only cost time.
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            forward_sync_buffers=not cfg.model.global_bn)
        share_gradients_in_memory(net)
        if device.type == "cpu":  # the loss's gather too, where the host is shared
            loss_sum = shared_loss_sum(model, pre.batch_size)
    augment = SimCLRAugment(cfg.augment, image_size=height, channels=channels)
    second_ops = cfg.augment.second_view_ops
    second_augment = None if second_ops is None else SimCLRAugment(
        cfg.augment.model_copy(update={"ops": second_ops, "second_view_ops": None}),
        image_size=height, channels=channels)
    precision = resolve_precision(pre.precision, device)
    train_step = TrainStep(net, optimizer, schedule, augment, pre.temperature, precision,
                           pre.channels_last, loss=pre.loss, second_augment=second_augment,
                           sum_over_ranks=loss_sum)
    if rank == 0:
        logger.info("%d epochs x %d steps of %d images on %d %s worker(s), %s%s",
                    pre.epochs, steps_per_epoch, pre.batch_size, world, device.type, precision,
                    ", channels-last" if pre.channels_last else "")
    rows = training_subset(pre.subset_seed, pre.max_images, len(train))
    log_every = log_every or max(1, (steps_per_epoch + 1) // 2)  # one line, at half-way
    run_start, run_start_step = time.perf_counter(), step
    config_json = cfg.model_dump(mode="json")

    for epoch in range(start_epoch, pre.epochs):
        net.train()
        perm = epoch_permutation(cfg.seed, epoch, n_train)
        epoch_start, cpu_start = time.perf_counter(), time.process_time()
        loss_sum = acc_sum = 0.0
        lr = schedule.lr_at(step)
        for i in range(steps_per_epoch):
            idx = local_batch_indices(perm, i, pre.batch_size, rank, world)
            if rows is not None:
                idx = rows[idx]
            images = to_float_tensor(train.images(idx)).to(device, non_blocking=True)
            out = train_step(images, step, step_generator(cfg.seed, step, rank))
            step += 1
            loss, acc, lr = out["loss"], out["contrastive_acc"], out["lr"]
            loss_sum += loss
            acc_sum += acc
            if rank == 0 and (i + 1) % log_every == 0 and i + 1 < steps_per_epoch:
                rate = (step - run_start_step) / max(time.perf_counter() - run_start, 1e-9)
                logger.info("epoch %d/%d step %d/%d loss %.4f acc %.3f lr %.4g img/s %.0f ETA %s",
                            epoch + 1, pre.epochs, step, total_steps, loss, acc, lr,
                            rate * pre.batch_size, format_eta((total_steps - step) / rate))
        # CPU seconds of the busiest rank: the epoch's cost without time lost to other jobs
        cpu_time = torch.tensor([time.process_time() - cpu_start], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(cpu_time, op=dist.ReduceOp.MAX)  # also a barrier: slowest rank's time
        epoch_time = time.perf_counter() - epoch_start
        row: dict[str, Any] = {
            "epoch": epoch + 1, "step": step,
            "loss": loss_sum / steps_per_epoch,
            "contrastive_acc": acc_sum / steps_per_epoch,
            "lr": lr, "images_per_s": steps_per_epoch * pre.batch_size / epoch_time,
            "epoch_time_s": epoch_time, "epoch_cpu_s": float(cpu_time),
            "resumed_from": resumed_from,
        }
        last = epoch + 1 == pre.epochs
        if rank == 0 and pre.knn_every and ((epoch + 1) % pre.knn_every == 0 or last):
            row[MONITOR_METRIC] = knn_monitor(model.encoder, dataset, cfg)
        history.append(row)
        if rank == 0:
            remaining = (pre.epochs - epoch - 1) * epoch_time
            knn = f" knn_top1 {row[MONITOR_METRIC]:.3f}" if MONITOR_METRIC in row else ""
            logger.info("epoch %d/%d done: step %d/%d loss %.4f acc %.3f lr %.4g img/s %.0f%s "
                        "ETA %s", epoch + 1, pre.epochs, step, total_steps, row["loss"],
                        row["contrastive_acc"], lr, row["images_per_s"], knn,
                        format_eta(remaining))
        checkpoint = (epoch + 1) % pre.checkpoint_every == 0 or last
        state = TrainingState(
            model=model.state_dict(), optimizer=optimizer.state_dict(), step=step,
            epoch=epoch + 1, config=config_json, history=list(history), rng=capture_rng(),
        ) if checkpoint else None
        worker.report({k: v for k, v in row.items() if isinstance(v, int | float)}, state)
        end = EpochEnd(rank, world, epoch + 1, step, checkpoint, row)
        for hook in hooks:
            hook.on_epoch_end(end)

    if start_epoch >= pre.epochs and rank == 0:
        logger.info("run %s already finished (%d epochs); nothing to train", worker.run_name,
                    start_epoch)
    return history
