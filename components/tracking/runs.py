"""MLflow tracking of stages: one child run per stage, nested under a pipeline (parent) run.

Everything goes through one :class:`Tracker` (an :class:`mlflow.MlflowClient` with explicit
tracking and registry URIs, and the experiment id) built once from the config and passed in:
no process-global MLflow state is read or set, and runs are created and ended with explicit run
ids, so tracking works from any thread. A stage that logs into its own run (``register`` logs
models) gets the run id and the tracker from its :class:`~components.stage_api.StageContext`.

What goes where (one rule each): per-epoch history rows are step metrics; a stage's summary
metrics and timings are logged at the history's final step (never at step 0 under a history
key, where charts would show them as the first point); counters
(:func:`components.tracking.headline.is_counter`: epochs, steps, workers, image counts) are
params; the data sets a run read are its MLflow inputs (digest: the manifest's content hash);
``mlflow.source.*`` system tags name what ran and the git commit. The pipeline (parent) run is
named ``<UTC date> <time> · <config digest>``, described in ``mlflow.note.content``, and ends
with the headline metrics, the results table and the key plots (:func:`finish_pipeline_run`).

Status rules: a stage that raises ends FAILED with the error as tags, its parent is marked FAILED
too, and the exception propagates. A process killed mid-stage leaves its run RUNNING; each run
records ``simclr.host``/``simclr.pid`` so :func:`sweep_stale_runs` can tell dead runs from live ones.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from components.config import PipelineConfig
from components.io import file_sha256
from components.logs import relayed
from components.stage_api import PARENT_RUN_ENV, STAGE_NAMES, StagePaths, StageResult
from components.tracking.headline import headline_metrics, is_counter
from components.tracking.lineage import (
    DVC_LOCK,
    DatasetRead,
    datasets_read,
    lineage_files,
    lineage_tags,
    source_tags,
)

log = logging.getLogger(__name__)

DB_FILE = "mlflow.db"
HOST_TAG, PID_TAG = "simclr.host", "simclr.pid"
PIPELINE_SOURCE = "simclr-pipeline (Prefect flow, flows/pipeline.py)"
# The parent run's key plots: (stage, file under outputs/<stage>/), logged under plots/<stage>/
KEY_PLOTS = (("pretrain", "loss.png"), ("linear-eval", "confusion.png"), ("finetune", "curves.png"),
             ("baselines", "curves.png"))
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
    tags = {"stage": name, **_process_tags(), **lineage_tags(cfg, root),
            **source_tags(root, f"simclr {name}")}
    if parent:
        tags[MLFLOW_PARENT_RUN_ID] = parent
    run_id = client.create_run(experiment_id, run_name=name, tags=_clip_tags(tags)).info.run_id
    # under the flow the parent run and the closing summary say where to look
    log.log(logging.DEBUG if relayed() else logging.INFO, "stage %s: MLflow run %s (parent %s)",
            name, run_id, parent or "-")
    try:
        _log_params(client, run_id, cfg.flat())
        client.log_text(run_id, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False),
                        "lineage/resolved_params.yaml")
        _log_lineage_files(client, run_id, cfg, root)
        log_datasets(client, run_id, datasets_read(cfg, root, name))
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


def pipeline_run_name(cfg: PipelineConfig, now: datetime | None = None) -> str:
    """``2026-12-02 19:40 · 3fa2c1d0``: when it started (UTC) and which configuration ran."""
    return f"{(now or datetime.now(UTC)):%Y-%m-%d %H:%M} · {cfg.digest()[:8]}"


def pipeline_description(cfg: PipelineConfig, preset: str | None, overrides: Sequence[str],
                         stages: Sequence[str], launched_by: str = "") -> str:
    """The parent run's description (``mlflow.note.content``, markdown): what ran and how."""
    source = cfg.data.source
    lines = [f"SimCLR pipeline run of configuration `{cfg.digest()}` (params_digest).", "",
             f"- stages: {', '.join(stages) or 'none'}",
             f"- preset: {preset or 'none (params.yaml)'}",
             f"- overrides: {', '.join(f'`{o}`' for o in overrides) or 'none'}",
             f"- data: {source.name} ({source.kind}); transfer: "
             f"{', '.join(t.name for t in cfg.data.transfer) or 'none'}",
             f"- model: {cfg.model.arch} (width {cfg.model.width}), {cfg.pretrain.epochs} "
             f"pretraining epochs on {cfg.ray.num_workers} worker(s)",
             f"- gate: `{cfg.registry.gate.metric}` decides promotion of `{cfg.registry.model_name}`"]
    if launched_by:
        lines.append(f"- launched by: {launched_by}")
    lines += ["", "Headline metrics (linear, kNN, fine-tune, baselines, transfer, registered "
                  "version) are logged when the run finishes; the results table is the artifact "
                  "`results/results.md`, the key plots are under `plots/`."]
    return "\n".join(lines)


def start_pipeline_run(cfg: PipelineConfig, tracker: Tracker | None = None, *,
                       preset: str | None = None, overrides: Sequence[str] = (),
                       stages: Sequence[str] = STAGE_NAMES, launched_by: str = "",
                       run_name: str | None = None) -> str:
    """Open the parent run of a whole pipeline execution; returns its id (children nest under it).

    Named :func:`pipeline_run_name` unless ``run_name`` is given; its description says what ran
    (stages, preset, overrides, data, model, gate; ``launched_by``: e.g. the Prefect flow run).
    """
    tracker = tracker or Tracker.from_config(cfg)
    client, experiment_id = tracker.client, tracker.experiment_id
    root = Path.cwd()
    tags = {"pipeline": "true", **_process_tags(), **lineage_tags(cfg, root),
            **source_tags(root, PIPELINE_SOURCE, "JOB"),
            MLFLOW_RUN_NOTE: pipeline_description(cfg, preset, list(overrides), list(stages),
                                                  launched_by)}
    run_id = client.create_run(experiment_id, run_name=run_name or pipeline_run_name(cfg),
                               tags=_clip_tags(tags)).info.run_id
    _log_params(client, run_id, cfg.flat())
    _log_lineage_files(client, run_id, cfg, root)
    return run_id


def finish_pipeline_run(run_id: str, cfg: PipelineConfig, tracker: Tracker | None = None,
                        status: str = "FINISHED", root: Path | None = None) -> None:
    """Log what the run ended with, then end it (:func:`end_pipeline_run`).

    Always: ``dvc.lock`` and the data manifests as they are now (``lineage/after/``) and the
    data sets as MLflow inputs. When it FINISHED: the headline metrics
    (:func:`~components.tracking.headline.headline_metrics`, one name per meaning), the results
    table (``results/results.md``) and the key plots (``plots/<stage>/``). Logging problems are
    warnings: the run is ended regardless.
    """
    tracker = tracker or Tracker.from_config(cfg)
    client, root = tracker.client, (root or Path.cwd())
    paths = StagePaths.of(cfg)
    try:
        lock = root / DVC_LOCK
        if lock.is_file():  # the stage hashes this run ended with: `dvc repro` reproduces them
            client.log_artifact(run_id, str(lock), "lineage/after")
        for path, folder in lineage_files(cfg, root):
            if folder.startswith("lineage/manifests"):
                client.log_artifact(run_id, str(path), folder.replace("lineage/", "lineage/after/", 1))
        log_datasets(client, run_id, datasets_read(cfg, root))
        if status == "FINISHED":
            now = int(time.time() * 1000)
            metrics = [Metric(_key(k), v, now, 0)
                       for k, v in headline_metrics(_under(root, paths)).items()]
            for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
                client.log_batch(run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])
            results = root / paths.results
            if results.is_file():
                client.log_artifact(run_id, str(results), "results")
            for stage, name in KEY_PLOTS:
                plot = root / paths.stage_dir(stage) / name
                if plot.is_file():
                    client.log_artifact(run_id, str(plot), f"plots/{stage}")
    except Exception as err:  # noqa: BLE001 - the run's own outcome matters more
        log.warning("pipeline run %s: could not log its results: %s", run_id, err)
    end_pipeline_run(run_id, status, tracker=tracker)


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


def _under(root: Path, paths: StagePaths) -> StagePaths:
    """``paths`` resolved against ``root`` (absolute ones stay as they are)."""
    return StagePaths(root / paths.data, root / paths.outputs)


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
    """One stage result into its run (rules: module docstring).

    History rows are step metrics (a row's text columns, e.g. ``subset``, prefix its keys:
    ``1pct/val_top1``); metrics and timings are logged at the history's final step; counters
    anywhere are params; then tags and artifacts.
    """
    now = int(time.time() * 1000)
    metrics: list[Metric] = []
    counters: dict[str, Any] = {}
    final_step = 0
    for index, row in enumerate(result.history):
        step = int(row.get("step", row.get("epoch", index)))
        final_step = max(final_step, step)
        prefix = "".join(f"{v}/" for k, v in row.items() if isinstance(v, str))
        metrics += [Metric(_key(f"{prefix}{k}"), _float(v), now, step) for k, v in row.items()
                    if k not in ("step", "epoch") and _number(v) and not is_counter(k)]
    for key, value in {**result.metrics, **result.timings}.items():
        if not _number(value):
            continue
        if is_counter(key):
            counters[key] = int(_float(value)) if _float(value).is_integer() else _float(value)
        else:
            metrics.append(Metric(_key(key), _float(value), now, final_step))
    for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])
    _log_params(client, run_id, counters)
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


def log_datasets(client: MlflowClient, run_id: str, reads: list[DatasetRead]) -> None:
    """The data sets a run read as its MLflow inputs (the run page's Datasets)."""
    if not reads:
        return
    client.log_inputs(run_id, datasets=[
        DatasetInput(Dataset(read.name, read.digest, "local", read.source,
                             profile=json.dumps(read.profile)),
                     tags=[InputTag("mlflow.data.context", read.context)])
        for read in reads])


def _log_lineage_files(client: MlflowClient, run_id: str, cfg: PipelineConfig,
                       root: Path) -> None:
    for path, folder in lineage_files(cfg, root):
        client.log_artifact(run_id, str(path), folder)


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


__all__ = ["Tracker", "end_pipeline_run", "finish_pipeline_run", "log_datasets", "log_result",
           "mark_failed", "pipeline_description", "pipeline_run_name", "resolve_tracking_uri",
           "start_pipeline_run", "sweep_stale_runs", "tracked_stage"]
