"""Distributed SimCLR pretraining on Ray Train (V2 API, ``TorchTrainer``).

The driver (:func:`run_pretraining`) connects to Ray (``cfg.ray.address``, else ``$RAY_ADDRESS``,
else a local instance) and starts ``cfg.ray.num_workers`` workers running
``components.training.ray_worker.train_loop_per_worker``, which drives the engine-agnostic loop
(``components.training.loop``). Each worker opens the canonical data set by path (memory-mapped
shards, nothing through the object store), reads its slice of every global batch, makes the
two views on its own device and steps a DDP-wrapped SimCLR model whose NT-Xent takes its
negatives from the global batch and whose BatchNorm layers normalise over the global batch.

Resume. Checkpoints go to ``cfg.ray.storage_path`` under a run name derived from the data's
content hash and the training parameters (:func:`run_name_for`), so a rerun of the same stage
(after a crash, a kill or a finished run) resumes from the newest checkpoint with the same LR
schedule and data order. ``FailureConfig(max_failures)`` restarts a group whose worker died from
that checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.config import PipelineConfig
from components.errors import PipelineError
from components.logs import RELAYED_ENV, relayed
from components.training.checkpointing import load_training_state
from components.training.loop import Hook, PretrainOutcome, run_name_for, validate

__all__ = ["PretrainOutcome", "connect_ray", "prepare_local_instance", "quiet_ray_logs",
           "resolve_storage", "run_name_for", "run_pretraining", "start_autoscaling_coordinator",
           "storage_filesystem"]

log = logging.getLogger(__name__)


LOCAL_INSTANCE_ENV = {
    # Ray Train's PreemptionWatcher actor polls for nodes being drained (spot reclaims); the
    # one node of a local instance is this machine. Off: one actor fewer to start (~6 s of a
    # 2-core machine per run) and no core_worker error about its constructor arguments.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Ray Train's Prometheus metrics: a local instance runs without the dashboard that serves them
    "RAY_TRAIN_METRICS_ENABLED": "0",
}
# Ray turns token auth on for every new local instance (the token in ~/.ray/auth_token) and
# logs a warning saying so each time; the auth stays, the notice goes. (Setting RAY_AUTH_MODE
# instead would have to happen before `import ray`, which reads it.)
AUTH_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def resolve_storage(storage_path: str) -> str:
    """Ray needs absolute local paths; URIs (``s3://...``) pass through."""
    if "://" in storage_path:
        return storage_path
    return str(Path(storage_path).expanduser().resolve())


def storage_filesystem(storage_path: str) -> Any:
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
    runtime_env: dict[str, Any] = {"worker_process_setup_hook": quiet_worker_logs}
    if relayed():  # workers of a remote cluster do not inherit this process's environment
        runtime_env["env_vars"] = {RELAYED_ENV: "1"}
    common = {"logging_level": logging.WARNING, "log_to_driver": True, "runtime_env": runtime_env}
    if address:
        ray.init(address=address, **common)
    else:
        prepare_local_instance()
        logging.getLogger(AUTH_NOTICE_LOGGER).setLevel(logging.ERROR)
        needed = math.ceil(cfg.ray.num_workers * cfg.ray.cpus_per_worker)
        ray.init(num_cpus=max(needed, os.cpu_count() or 1), include_dashboard=False, **common)
        start_autoscaling_coordinator()
    return time.perf_counter() - start


def prepare_local_instance() -> None:
    """Before a local instance starts (its processes inherit this environment); a value the
    user set wins."""
    for name, value in LOCAL_INSTANCE_ENV.items():
        os.environ.setdefault(name, value)


def quiet_worker_logs() -> None:
    """Runs in every Ray worker process of the job (``worker_process_setup_hook``).

    Ray Train's per-report dumps go. Ray Train's detached ``PlacementGroupCleaner`` polls the State API, which lives in the
    dashboard; a local instance runs without one (fewer processes on a 2-core machine), so
    every poll logs the same warning. The local instance and its placement groups end with
    the stage, so the cleaner has nothing to do there.
    """
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner"
                      ).setLevel(logging.ERROR)
    # "Reporting training result N: TrainingReport(...)", once per worker per epoch: Ray Train
    # logs it under the module's file path (outside `ray.train`, so RunConfig's logging_config
    # does not reach it) into the worker's root logger
    import importlib.util

    try:
        context = importlib.util.find_spec("ray.train.v2._internal.execution.context")
    except ImportError:  # another Ray Train layout: its dumps stay
        context = None
    if context is not None and context.origin:
        logging.getLogger(context.origin).setLevel(logging.WARNING)


# Ray Train's controller asks the autoscaling coordinator (a detached actor it creates on first
# use) for its workers' resources with a 5 s timeout; on a fresh local instance of a 2-core
# machine that actor is often still importing, so the first request fails with a warning and a
# 17-line GetTimeoutError traceback (Ray retries 20 s later). Started and awaited here, it is up.
COORDINATOR_START_TIMEOUT_S = 120.0


def start_autoscaling_coordinator() -> None:
    """Start Ray Train's autoscaling coordinator on a new local instance and wait until it runs."""
    import ray

    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
    except ImportError:  # another Ray layout: Ray Train starts it on first use
        return
    try:
        ray.get(get_or_create_autoscaling_coordinator().__ray_ready__.remote(),
                timeout=COORDINATOR_START_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        log.debug("autoscaling coordinator not up after %.0f s", COORDINATOR_START_TIMEOUT_S)


def quiet_ray_logs() -> None:
    """Ray's own INFO chatter drowns the training progress lines.

    Before ``import ray`` (Ray reads these at import): under the flow, whose logger names the
    stage and timestamps each line, the workers' ``(RayTrainWorker pid=...)`` prefix goes; off
    a terminal, so do its colour codes. Ray Train's per-report ``Reporting training result``
    lines and checkpoint notes are INFO of ``ray.train``: ``RunConfig.logging_config`` keeps
    its warnings only (:func:`run_pretraining`). Also called by the study runner (Ray Tune).
    """
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if relayed():
        os.environ.setdefault("RAY_DISABLE_WORKER_LOG_PREFIX", "1")
    if relayed() or not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    for name in ("ray", "ray.train", "ray.data", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_pretraining(
    cfg: PipelineConfig,
    dataset_path: str | Path,
    *,
    run_name: str | None = None,
    hooks: Sequence[Hook] = (),
) -> PretrainOutcome:
    """Pretrain SimCLR on Ray Train workers; resumes the run if its checkpoints exist.

    ``dataset_path``: canonical data set folder (``train`` split for training and the kNN
    monitor, ``val`` too when it has one; never ``test``); it must be readable at the same path
    on every Ray node.
    ``run_name``: defaults to :func:`run_name_for` (data hash + training parameters).
    ``hooks``: picklable :class:`~components.training.loop.Hook` objects run in every worker.
    """
    from components.data.store import CanonicalDataset
    from components.training.ray_worker import PretrainJob, train_loop_per_worker

    dataset_path = Path(dataset_path).resolve()
    dataset = CanonicalDataset(dataset_path)
    validate(cfg, dataset, cfg.ray.num_workers)
    name = run_name or run_name_for(cfg, dataset.content_hash)
    storage = resolve_storage(cfg.ray.storage_path)

    quiet_ray_logs()
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    filesystem = storage_filesystem(storage)
    # With an explicit filesystem Ray wants the path without its scheme (bucket/prefix).
    ray_storage = storage.split("://", 1)[1] if filesystem is not None else storage
    ray_init_s = connect_ray(cfg)
    job = PretrainJob(config=cfg.model_dump(mode="json"), dataset_path=str(dataset_path),
                      run_name=name, hooks=tuple(hooks))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
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
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
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
