"""Distributed SimCLR pretraining on Ray Train (V2 API, ``TorchTrainer``).

The driver (:func:`run_pretraining`) connects to Ray (``cfg.ray.address``, else ``$RAY_ADDRESS``,
else a local instance), and starts ``cfg.ray.num_workers`` workers running
:func:`train_loop_per_worker`. Each worker opens the canonical data set by path
(memory-mapped shards, nothing through the object store), reads its slice of every global
batch, makes the two views on its own device and steps a DDP-wrapped SimCLR model whose
NT-Xent takes its negatives from the global batch (``components.losses``).

Determinism and resume. The global batch order of epoch ``e`` is a permutation seeded by
``(seed, e)``; rank ``r`` takes rows ``[r b, (r + 1) b)`` of each global batch of
``B = world b`` images (the last partial batch is dropped, so every rank has equal shapes).
The augmentation generator of a step is seeded by ``(seed, step, rank)``. A checkpoint every
``cfg.pretrain.checkpoint_every`` epochs (and after the last) holds the model, optimiser,
step, epoch, RNG states, config and history; the Ray run name is derived from the data's
content hash and the training parameters, so a rerun of the same stage (after a crash, a
kill or a finished run) resumes from the newest checkpoint with the same LR schedule and data
order. ``FailureConfig(max_failures)`` restarts a group whose worker died from that checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from components.config import PipelineConfig
from components.errors import ConfigError, PipelineError
from components.training.checkpointing import (
    TrainingState,
    capture_rng,
    load_training_state,
    restore_rng,
    save_training_state,
)

log = logging.getLogger(__name__)

# Test-only fault injection: a marker file path. When set and the file does not exist yet, the
# last-rank worker creates it and kills its own process (os._exit) right after the checkpoint of
# epoch ``SIMCLR_TEST_CRASH_AFTER_EPOCH``. Read by the driver, never by library code elsewhere.
CRASH_MARKER_ENV = "SIMCLR_TEST_CRASH_MARKER"
CRASH_EPOCH_ENV = "SIMCLR_TEST_CRASH_AFTER_EPOCH"

# Sections whose values change what is trained; the run name hashes them with the data hash.
TRAINING_SECTIONS = ("seed", "augment", "model", "pretrain")
# pretrain.* keys that only change monitoring or speed, not the weights: editing them (or the
# ray section: workers, address, storage) after a crash still resumes the same run.
NOT_TRAINING_KEYS = ("checkpoint_every", "knn_every", "knn_k", "knn_images",
                     "threads_per_worker")


@dataclass(frozen=True)
class PretrainJob:
    """Everything a worker needs; plain data so it pickles to any cluster."""

    config: dict[str, Any]  # PipelineConfig.model_dump(mode="json")
    dataset_path: str  # absolute path of the canonical data set, readable by every worker
    run_name: str
    freeze_batchnorm: bool = False
    crash_marker: str | None = None
    crash_after_epoch: int = 1
    log_every: int = 0  # steps between progress lines on rank 0; 0: about 4 per epoch


@dataclass
class PretrainOutcome:
    """What the driver hands back: the trained model's weights and the run's history."""

    run_name: str
    storage_path: str
    checkpoint_path: str
    model_state: dict[str, torch.Tensor]  # SimCLRModel state dict: encoder.* and head.*
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0  # this fit() call, Ray overhead included
    ray_init_s: float = 0.0  # 0 when Ray was already connected


# ----------------------------------------------------------------------------- driver side
def run_name_for(cfg: PipelineConfig, content_hash: str) -> str:
    """Deterministic Ray run name: data content + every parameter that changes the training.

    The global batch order does not depend on the number of workers, so ``ray.*`` is left
    out: a run may resume on a different number of workers.
    """
    dumped = cfg.model_dump(mode="json")
    chosen = {name: dumped[name] for name in TRAINING_SECTIONS}
    chosen["pretrain"] = {k: v for k, v in chosen["pretrain"].items()
                          if k not in NOT_TRAINING_KEYS}
    digest = hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()
    return f"pretrain-{content_hash[:12]}-{digest[:12]}"


def resolve_storage(storage_path: str) -> str:
    """Ray needs absolute local paths; URIs (``s3://...``) pass through."""
    if "://" in storage_path:
        return storage_path
    return str(Path(storage_path).expanduser().resolve())


def _storage_filesystem(storage_path: str) -> Any:
    """An explicit S3 filesystem when ``AWS_ENDPOINT_URL`` points at a non-AWS server.

    Ray's controller and workers are separate processes (possibly started before this
    environment was set); a pickled filesystem carries the endpoint and credentials to them.
    """
    if not storage_path.startswith("s3://") or not os.environ.get("AWS_ENDPOINT_URL"):
        return None
    import pyarrow.fs

    endpoint = os.environ["AWS_ENDPOINT_URL"]
    scheme, _, host = endpoint.partition("://")
    return pyarrow.fs.S3FileSystem(
        endpoint_override=host or scheme, scheme=scheme if host else "https",
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )


def connect_ray(cfg: PipelineConfig) -> float:
    """Connect to ``cfg.ray.address`` / ``$RAY_ADDRESS`` or start a local instance; seconds taken."""
    import ray

    if ray.is_initialized():
        return 0.0
    start = time.perf_counter()
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    common = {"logging_level": logging.WARNING, "log_to_driver": True,
              "runtime_env": {"worker_process_setup_hook": quiet_worker_logs}}
    if address:
        ray.init(address=address, **common)
    else:
        needed = math.ceil(cfg.ray.num_workers * cfg.ray.cpus_per_worker)
        ray.init(num_cpus=max(needed, os.cpu_count() or 1), include_dashboard=False, **common)
    return time.perf_counter() - start


def quiet_worker_logs() -> None:
    """Runs in every Ray worker process of the job (``worker_process_setup_hook``).

    Ray Train's detached ``PlacementGroupCleaner`` polls the State API, which lives in the
    dashboard; a local instance runs without one (fewer processes on a 2-core machine), so
    every poll logs the same warning. The local instance and its placement groups end with
    the stage, so the cleaner has nothing to do there.
    """
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner"
                      ).setLevel(logging.ERROR)


def _quiet_ray_logs() -> None:
    """Ray's own INFO chatter drowns the training progress lines."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    for name in ("ray", "ray.train", "ray.data", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_pretraining(
    cfg: PipelineConfig,
    dataset_path: str | Path,
    *,
    run_name: str | None = None,
    freeze_batchnorm: bool = False,
) -> PretrainOutcome:
    """Pretrain SimCLR on Ray Train workers; resumes the run if its checkpoints exist.

    ``dataset_path``: canonical data set folder (``train`` split for training, ``test`` for the
    kNN monitor); it must be readable at the same path on every Ray node. ``run_name``:
    defaults to :func:`run_name_for` (data hash + training parameters). ``freeze_batchnorm``:
    BN layers normalise with their (never updated) running statistics instead of the batch's,
    so a worker's output does not depend on how the global batch is split (used to compare
    1 and 2 workers on CPU, where SyncBatchNorm is unavailable).
    """
    from components.data.store import CanonicalDataset

    dataset_path = Path(dataset_path).resolve()
    dataset = CanonicalDataset(dataset_path)
    _validate(cfg, dataset)
    name = run_name or run_name_for(cfg, dataset.content_hash)
    storage = resolve_storage(cfg.ray.storage_path)

    _quiet_ray_logs()
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    filesystem = _storage_filesystem(storage)
    # With an explicit filesystem Ray wants the path without its scheme (bucket/prefix).
    ray_storage = storage.split("://", 1)[1] if filesystem is not None else storage
    ray_init_s = connect_ray(cfg)
    job = PretrainJob(
        config=cfg.model_dump(mode="json"), dataset_path=str(dataset_path), run_name=name,
        freeze_batchnorm=freeze_batchnorm, crash_marker=os.environ.get(CRASH_MARKER_ENV),
        crash_after_epoch=int(os.environ.get(CRASH_EPOCH_ENV, "1")),
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=asdict(job),
        torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
            resources_per_worker={"CPU": cfg.ray.cpus_per_worker,
                                  **({"GPU": 1} if cfg.ray.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=name, storage_path=ray_storage, storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    log.info("pretrain: Ray run %s, storage %s, %d worker(s)", name, storage, cfg.ray.num_workers)
    start = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - start
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise PipelineError(f"Ray run {name}: finished without a checkpoint in {storage}")
    with result.checkpoint.as_directory() as folder:
        state = load_training_state(folder)
    return PretrainOutcome(
        run_name=name, storage_path=storage, checkpoint_path=result.checkpoint.path,
        model_state=state.model, history=state.history, wall_time_s=wall, ray_init_s=ray_init_s,
    )


def _validate(cfg: PipelineConfig, dataset: Any) -> None:
    workers, batch = cfg.ray.num_workers, cfg.pretrain.batch_size
    if batch % workers:
        raise ConfigError(f"pretrain.batch_size: {batch} is not divisible by "
                          f"ray.num_workers={workers}")
    if batch // workers < 2:
        raise ConfigError(f"pretrain.batch_size: {batch} leaves fewer than 2 images per worker")
    n_train = _train_count(cfg, len(dataset.split("train")))
    if n_train < batch:
        raise ConfigError(f"pretrain.batch_size: {batch} exceeds the {n_train} training images "
                          f"of {dataset.root}")


def _train_count(cfg: PipelineConfig, available: int) -> int:
    cap = cfg.pretrain.max_images
    return min(available, cap) if cap else available


# ----------------------------------------------------------------------------- data order
def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The global image order of one epoch: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def local_batch_indices(perm: np.ndarray, step_in_epoch: int, batch_size: int,
                        rank: int, world: int) -> np.ndarray:
    """Rank ``rank``'s rows of global batch ``step_in_epoch`` (equal shapes on every rank)."""
    per_rank = batch_size // world
    start = step_in_epoch * batch_size + rank * per_rank
    return perm[start:start + per_rank]


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The augmentation stream of one step on one rank (so a resumed run draws the same views).

    A CPU generator: SimCLRAugment draws the per-image parameters on the CPU (a few numbers per
    image) and applies them on the images' device.
    """
    mixed = int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(mixed & ((1 << 63) - 1))


# ----------------------------------------------------------------------------- worker side
def _freeze_batchnorm(model: nn.Module) -> None:
    """BN layers normalise with running statistics and never update them (see run_pretraining)."""
    def frozen_forward(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight,
                                        self.bias, training=False, momentum=0.0, eps=self.eps)

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.forward = types.MethodType(frozen_forward, module)


def _format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:d}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def _worker_logger() -> logging.Logger:
    logger = logging.getLogger("components.training.worker")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s pretrain: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


@torch.no_grad()
def _features(encoder: nn.Module, split: Any, indices: np.ndarray, device: torch.device,
              batch_size: int = 512) -> torch.Tensor:
    from components.augment import to_float_tensor

    out = []
    for start in range(0, len(indices), batch_size):
        images = to_float_tensor(split.images(indices[start:start + batch_size])).to(device)
        out.append(encoder(images).float().cpu())
    return torch.cat(out)


def knn_monitor(encoder: nn.Module, dataset: Any, cfg: PipelineConfig,
                device: torch.device) -> float:
    """kNN top-1 (cosine, k=cfg.pretrain.knn_k) of the representation h: the first
    ``knn_images`` training images (with labels) as memory bank, as many test images as queries."""
    from components.evaluation.knn import knn_top1

    train, test = dataset.split("train"), dataset.split("test")
    bank = np.arange(min(cfg.pretrain.knn_images, len(train)))
    queries = np.arange(min(cfg.pretrain.knn_images, len(test)))
    was_training = encoder.training
    encoder.eval()
    try:
        bank_h = _features(encoder, train, bank, device)
        query_h = _features(encoder, test, queries, device)
    finally:
        encoder.train(was_training)
    return knn_top1(bank_h, torch.from_numpy(train.labels[bank]), query_h,
                    torch.from_numpy(test.labels[queries]), k=cfg.pretrain.knn_k,
                    temperature=cfg.evaluate.knn.temperature)


def train_loop_per_worker(job_dict: dict[str, Any]) -> None:
    """Ray Train worker body: train, checkpoint, monitor, report (every call is a barrier)."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from components.augment import SimCLRAugment, to_float_tensor
    from components.config import config_from_dict
    from components.data.store import CanonicalDataset
    from components.models.simclr import build_simclr_model
    from components.optim import WarmupCosine, build_optimizer, peak_lr
    from components.training.step import TrainStep

    job = PretrainJob(**job_dict)
    cfg = config_from_dict(job.config)
    pre = cfg.pretrain
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    threads = pre.threads_per_worker or max(1, int(cfg.ray.cpus_per_worker))
    torch.set_num_threads(threads)
    device = ray.train.torch.get_device()
    logger = _worker_logger()

    dataset = CanonicalDataset(job.dataset_path)
    train = dataset.split("train")
    height, width, channels = dataset.image_shape
    n_train = _train_count(cfg, len(train))
    steps_per_epoch = n_train // pre.batch_size
    total_steps = steps_per_epoch * pre.epochs

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_simclr_model(cfg.model, in_channels=channels, image_size=height)
    if job.freeze_batchnorm:
        _freeze_batchnorm(model)
    elif cfg.ray.use_gpu and world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if pre.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, pre.optim, pre.batch_size)
    schedule = WarmupCosine.from_epochs(peak_lr(pre.optim, pre.batch_size),
                                        pre.optim.warmup_epochs, pre.epochs, steps_per_epoch)

    start_epoch, step, history, resumed_from = 0, 0, [], 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_training_state(folder)
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        restore_rng(state.rng)
        start_epoch, step, history = state.epoch, state.step, state.history
        resumed_from = start_epoch
        if rank == 0:
            logger.info("resuming run %s from epoch %d (step %d)", job.run_name, start_epoch, step)

    ddp = nn.parallel.DistributedDataParallel if world > 1 else None
    net = ddp(model, device_ids=[device.index] if device.type == "cuda" else None) if ddp else model
    augment = SimCLRAugment(cfg.augment, image_size=height, channels=channels)
    train_step = TrainStep(net, optimizer, schedule, augment, pre.temperature, pre.precision,
                           pre.channels_last)
    log_every = job.log_every or max(1, steps_per_epoch // 4)
    run_start, run_start_step = time.perf_counter(), step

    for epoch in range(start_epoch, pre.epochs):
        net.train()
        perm = epoch_permutation(cfg.seed, epoch, n_train)
        epoch_start, cpu_start = time.perf_counter(), time.process_time()
        sums = {"loss": 0.0, "contrastive_acc": 0.0}
        lr = schedule.lr_at(step)
        for i in range(steps_per_epoch):
            idx = local_batch_indices(perm, i, pre.batch_size, rank, world)
            images = to_float_tensor(train.images(idx)).to(device, non_blocking=True)
            out = train_step(images, step, step_generator(cfg.seed, step, rank))
            step += 1
            loss, acc, lr = float(out["loss"]), float(out["contrastive_acc"]), float(out["lr"])
            sums["loss"] += loss
            sums["contrastive_acc"] += acc
            if rank == 0 and (i + 1) % log_every == 0:
                elapsed = time.perf_counter() - run_start
                rate = (step - run_start_step) / max(elapsed, 1e-9)
                logger.info("epoch %d/%d step %d/%d loss %.4f acc %.3f lr %.4g img/s %.0f ETA %s",
                            epoch + 1, pre.epochs, step, total_steps, loss, acc, lr,
                            rate * pre.batch_size, _format_eta((total_steps - step) / rate))
        # CPU seconds of the busiest rank: the epoch's cost without time lost to other jobs
        cpu_time = torch.tensor([time.process_time() - cpu_start], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(cpu_time, op=dist.ReduceOp.MAX)  # also a barrier: slowest rank's time
        epoch_time = time.perf_counter() - epoch_start
        row: dict[str, Any] = {
            "epoch": epoch + 1, "step": step,
            "loss": sums["loss"] / steps_per_epoch,
            "contrastive_acc": sums["contrastive_acc"] / steps_per_epoch,
            "lr": lr, "images_per_s": steps_per_epoch * pre.batch_size / epoch_time,
            "epoch_time_s": epoch_time, "epoch_cpu_s": float(cpu_time),
            "resumed_from": resumed_from,
        }
        last = epoch + 1 == pre.epochs
        if rank == 0 and pre.knn_every and ((epoch + 1) % pre.knn_every == 0 or last):
            row["knn_top1"] = knn_monitor(model.encoder, dataset, cfg, device)
        history.append(row)
        if rank == 0:
            remaining = (pre.epochs - epoch - 1) * epoch_time
            knn = f" knn_top1 {row['knn_top1']:.3f}" if "knn_top1" in row else ""
            logger.info("epoch %d/%d done: loss %.4f acc %.3f lr %.4g img/s %.0f%s ETA %s",
                        epoch + 1, pre.epochs, row["loss"], row["contrastive_acc"], lr,
                        row["images_per_s"], knn, _format_eta(remaining))
        metrics = {k: v for k, v in row.items() if isinstance(v, int | float)}
        if (epoch + 1) % pre.checkpoint_every == 0 or last:
            _report_with_checkpoint(metrics, rank, epoch, TrainingState(
                model=model.state_dict(), optimizer=optimizer.state_dict(), step=step,
                epoch=epoch + 1, config=job.config, history=history, rng=capture_rng()))
            _maybe_crash(job, rank, world, epoch + 1)
        else:
            ray.train.report(metrics)

    if start_epoch >= pre.epochs and rank == 0:
        logger.info("run %s already finished (%d epochs); nothing to train", job.run_name,
                    start_epoch)


def _report_with_checkpoint(metrics: dict[str, Any], rank: int, epoch: int,
                            state: TrainingState) -> None:
    """Rank 0 writes the checkpoint; every rank reports (a barrier) so all stay in step."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="simclr-ckpt-") as folder:
        save_training_state(folder, state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                         checkpoint_dir_name=f"epoch-{epoch + 1:05d}")


def _maybe_crash(job: PretrainJob, rank: int, world: int, epochs_done: int) -> None:
    """Test-only fault injection (see CRASH_MARKER_ENV): the process dies, no exception."""
    if not job.crash_marker or rank != world - 1 or epochs_done != job.crash_after_epoch:
        return
    marker = Path(job.crash_marker)
    if marker.exists():
        return
    import ray.train

    # Die only once Ray has registered this epoch's checkpoint, so the restart point is fixed.
    ray.train.get_all_reported_checkpoints(timeout_s=60)
    marker.write_text(f"killed rank {rank} after epoch {epochs_done}\n")
    os._exit(1)

