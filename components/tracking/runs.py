"""MLflow tracking of stages: one child run per stage, nested under a pipeline (parent) run.

Everything goes through one :class:`Tracker` (an :class:`mlflow.MlflowClient` with explicit
tracking and registry URIs, and the experiment id) built once from the config and passed in:
no process-global MLflow state is read or set, and runs are created and ended with explicit run
ids, so tracking works from any thread. A stage that logs into its own run (``register`` logs
models) gets the run id and the tracker from its :class:`~components.stage_api.StageContext`.

Status rules: a stage that raises ends FAILED with the error as tags, its parent is marked FAILED
too, and the exception propagates. A process killed mid-stage leaves its run RUNNING; each run
records ``simclr.host``/``simclr.pid`` so :func:`sweep_stale_runs` can tell dead runs from live ones.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from components.config import PipelineConfig
from components.io import file_sha256
from components.stage_api import PARENT_RUN_ENV, StageResult
from components.tracking.lineage import lineage_files, lineage_tags

log = logging.getLogger(__name__)

DB_FILE = "mlflow.db"
HOST_TAG, PID_TAG = "simclr.host", "simclr.pid"
_BAD_KEY_CHARS = re.compile(r"[^\w\-./ :]")


# ----------------------------------------------------------------------------- store
def resolve_tracking_uri(cfg: PipelineConfig, root: Path | None = None) -> str:
    """cfg.tracking.tracking_uri, else $MLFLOW_TRACKING_URI, else ``sqlite:///<root>/mlflow.db``."""
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(root or Path.cwd()).resolve() / DB_FILE}"


@dataclass(frozen=True)
class Tracker:
    """The MLflow store of one configuration: client (explicit URIs), URIs and experiment id."""

    client: MlflowClient
    tracking_uri: str
    registry_uri: str
    experiment_id: str

    @classmethod
    def from_config(cls, cfg: PipelineConfig, root: Path | None = None) -> Tracker:
        """The resolved store (created if absent) and ``cfg.tracking.experiment`` (likewise)."""
        uri = resolve_tracking_uri(cfg, root)
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        return cls(client, uri, uri, _experiment_id(client, cfg.tracking.experiment))


def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


# ----------------------------------------------------------------------------- runs
StageBody = Callable[[str], StageResult]  # the stage's work, given its MLflow run id


def tracked_stage(cfg: PipelineConfig, name: str, body: StageBody,
                  parent_run_id: str | None = None, tracker: Tracker | None = None) -> StageResult:
    """Run ``body(run_id)`` inside a child run named ``name``; log params, metrics, timings,
    history, artifacts.

    The parent is ``parent_run_id``, else ``$SIMCLR_PARENT_RUN_ID``, else none (standalone run).
    """
    tracker = tracker or Tracker.from_config(cfg)
    client, experiment_id = tracker.client, tracker.experiment_id
    root = Path.cwd()
    parent = parent_run_id or os.environ.get(PARENT_RUN_ENV) or None
    tags = {"stage": name, **_process_tags(), **lineage_tags(cfg, root)}
    if parent:
        tags[MLFLOW_PARENT_RUN_ID] = parent
    run_id = client.create_run(experiment_id, run_name=name, tags=_clip_tags(tags)).info.run_id
    log.info("stage %s: MLflow run %s (parent %s)", name, run_id, parent or "-")
    try:
        _log_params(client, run_id, cfg.flat())
        client.log_text(run_id, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False),
                        "lineage/resolved_params.yaml")
        for path in lineage_files(cfg, root):
            client.log_artifact(run_id, str(path), "lineage")
        with _system_metrics(tracker, run_id, cfg.tracking.system_metrics):
            result = body(run_id)
        log_result(client, run_id, result)
    except BaseException as err:
        reason = f"{type(err).__name__}: {err}"
        mark_failed(run_id, reason, client=client)
        if parent:
            mark_failed(parent, f"stage {name} failed: {reason}", client=client)
        raise
    client.set_terminated(run_id, "FINISHED")
    return result


def start_pipeline_run(cfg: PipelineConfig, run_name: str, tracker: Tracker | None = None) -> str:
    """Open the parent run of a whole pipeline execution; returns its id (children nest under it)."""
    tracker = tracker or Tracker.from_config(cfg)
    client, experiment_id = tracker.client, tracker.experiment_id
    root = Path.cwd()
    tags = {"pipeline": "true", **_process_tags(), **lineage_tags(cfg, root)}
    run_id = client.create_run(experiment_id, run_name=run_name, tags=_clip_tags(tags)).info.run_id
    _log_params(client, run_id, cfg.flat())
    for path in lineage_files(cfg, root):
        client.log_artifact(run_id, str(path), "lineage")
    return run_id


def end_pipeline_run(run_id: str, status: str = "FINISHED",
                     cfg: PipelineConfig | None = None, tracker: Tracker | None = None) -> None:
    """End the parent run (``FINISHED``/``FAILED``/``KILLED``).

    The orchestrator has the last word: a child failure marks the parent FAILED at once, but a
    stage that then succeeds on retry lets the pipeline end FINISHED (tagged ``recovered``).
    """
    client = _client(cfg, tracker)
    if status == "FINISHED" and client.get_run(run_id).info.status == "FAILED":
        client.set_tag(run_id, "recovered", "true")
    client.set_terminated(run_id, status)


def _client(cfg: PipelineConfig | None, tracker: Tracker | None) -> MlflowClient:
    if tracker is not None:
        return tracker.client
    if cfg is None:
        raise ValueError("pass the run's tracker or config: no global MLflow store is assumed")
    return Tracker.from_config(cfg).client


def mark_failed(run_id: str, reason: str, client: MlflowClient | None = None,
                cfg: PipelineConfig | None = None) -> None:
    """End ``run_id`` as FAILED with ``reason`` in the ``error`` tag (never raises)."""
    try:
        client = client or _client(cfg, None)
        client.set_tag(run_id, "error", reason[:MAX_TAG_VAL_LENGTH])
        client.set_terminated(run_id, "FAILED")
    except Exception as err:  # noqa: BLE001 - do not mask the original failure
        log.warning("could not mark run %s failed: %s", run_id, err)


def sweep_stale_runs(cfg: PipelineConfig, older_than_s: float = 24 * 3600,
                     tracker: Tracker | None = None) -> list[str]:
    """Mark RUNNING runs whose process is gone as FAILED; returns their ids.

    A run started on this host is stale when its recorded pid no longer exists (at any age);
    a run from another host (or without a pid) is stale once older than ``older_than_s``.
    """
    tracker = tracker or Tracker.from_config(cfg)
    client, experiment_id = tracker.client, tracker.experiment_id
    host, now_ms = socket.gethostname(), time.time() * 1000
    swept = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'",
                                  max_results=10_000):
        tags = run.data.tags
        pid = tags.get(PID_TAG)
        if tags.get(HOST_TAG) == host and pid and pid.isdigit():
            stale = not _pid_alive(int(pid))
        else:
            stale = now_ms - run.info.start_time > older_than_s * 1000
        if stale:
            client.set_tag(run.info.run_id, "error", "swept: process gone, run left RUNNING")
            client.set_terminated(run.info.run_id, "FAILED")
            swept.append(run.info.run_id)
    return swept


# ----------------------------------------------------------------------------- logging
def log_result(client: MlflowClient, run_id: str, result: StageResult) -> None:
    """Metrics and timings, history (as step metrics), tags and artifacts of one stage result."""
    now = int(time.time() * 1000)
    metrics = [Metric(_key(k), _float(v), now, 0)
               for k, v in {**result.metrics, **result.timings}.items() if _number(v)]
    for index, row in enumerate(result.history):
        step = int(row.get("step", row.get("epoch", index)))
        metrics += [Metric(_key(k), _float(v), now, step) for k, v in row.items()
                    if k not in ("step", "epoch") and _number(v)]
    for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])
    tags = dict(result.tags)
    for path in map(Path, result.artifacts):
        if path.is_file():
            tags[f"artifact_sha256.{path.name}"] = file_sha256(path)
            client.log_artifact(run_id, str(path), "outputs")
        elif path.is_dir():
            client.log_artifacts(run_id, str(path), f"outputs/{path.name}")
        else:
            log.warning("run %s: artifact %s does not exist; skipped", run_id, path)
    _log_tags(client, run_id, tags)


def _log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    entries = [Param(_key(k), str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()]
    for start in range(0, len(entries), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=entries[start:start + MAX_PARAMS_TAGS_PER_BATCH])


def _log_tags(client: MlflowClient, run_id: str, tags: dict[str, Any]) -> None:
    entries = [RunTag(k, v) for k, v in _clip_tags(tags).items()]
    for start in range(0, len(entries), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=entries[start:start + MAX_PARAMS_TAGS_PER_BATCH])


@contextmanager
def _system_metrics(tracker: Tracker, run_id: str, enabled: bool) -> Iterator[None]:
    """CPU/memory/GPU sampling into the run while the stage runs (``tracking.system_metrics``)."""
    if not enabled:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, tracking_uri=tracker.tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def _process_tags() -> dict[str, str]:
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _clip_tags(tags: dict[str, Any]) -> dict[str, str]:
    return {_key(k): str(v)[:MAX_TAG_VAL_LENGTH] for k, v in tags.items()}


def _key(name: str) -> str:
    return _BAD_KEY_CHARS.sub("_", str(name))[:250]


def _number(value: Any) -> bool:
    if hasattr(value, "item"):  # numpy / torch scalars
        value = value.item()
    return isinstance(value, int | float)


def _float(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["Tracker", "end_pipeline_run", "log_result", "mark_failed", "resolve_tracking_uri",
           "start_pipeline_run", "sweep_stale_runs", "tracked_stage"]
