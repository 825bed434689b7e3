"""MLflow of a study: one parent run per study experiment, one child run per trial.

Everything goes through explicit clients (the project's rule: no process-wide MLflow state):
:class:`StudyRuns` holds the store's URI, the experiment id and the parent run id, plain data
that a Ray Tune callback can pickle (:mod:`components.studies.callback` logs each trial live
from the driver; only the driver writes to the store).

- Parent: named ``study <name> · <scale> · <UTC start>``, tagged ``study``,
  ``study_experiment`` (the Tune experiment) and ``study_role=study``, described in
  ``mlflow.note.content``; params: the base configuration. When the study ends: the best
  cell's value as ``best_<metric>``, trial counts, and the report (``results.md``,
  ``results.json``, the plot) as artifacts under ``study/``.
- Child per trial (``study_role=trial``, ``study_trial=<name>``): the trial's overrides
  (``override.<key>``) and full configuration as params, the per-epoch history as step
  metrics (loss, contrastive accuracy, lr, epoch times), the final metrics at the last step,
  counters as params, ``study_trial_status`` (finished | diverged | error).

A restart finds its runs again by those tags: the parent of the same experiment is reopened
(RUNNING, this process's host and pid), a resumed trial continues its child run (epochs already
logged are not logged twice), a finished trial's child run is left as it is.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from components.config import PipelineConfig
from components.studies.plan import StudyPlan
from components.studies.report import TrialRecord
from components.tracking.headline import is_counter
from components.tracking.runs import HOST_TAG, PID_TAG, Tracker

log = logging.getLogger(__name__)

STUDY_TAG, EXPERIMENT_TAG, ROLE_TAG = "study", "study_experiment", "study_role"
TRIAL_TAG, STATUS_TAG, LOGGED_TAG = "study_trial", "study_trial_status", "study_trial_logged"
# per-epoch curves: pretraining's rows, and a supervised trial's (loss, train_top1, val_top1)
EPOCH_KEYS = ("loss", "contrastive_acc", "lr", "epoch_time_s", "epoch_cpu_s", "train_top1",
              "val_top1")
RUN_STATUS = {"finished": "FINISHED", "diverged": "FINISHED", "error": "FAILED"}


@dataclass(frozen=True)
class StudyRuns:
    """Where one study's runs are (picklable: no client inside)."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    study: str
    experiment: str

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def _find(client: MlflowClient, experiment_id: str, **tags: str) -> str | None:
    """The newest run of the experiment carrying every ``tags`` value, else None."""
    query = " and ".join(f"tags.{key} = '{_quote(value)}'" for key, value in tags.items())
    found = client.search_runs([experiment_id], query, max_results=1,
                               order_by=["attributes.start_time DESC"])
    return found[0].info.run_id if found else None


def _process_tags() -> dict[str, str]:
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    entries = [Param(str(k)[:250], str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(entries), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=entries[start:start + MAX_PARAMS_TAGS_PER_BATCH])


def _log_metrics(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])


def study_description(plan: StudyPlan, preset: str | None, overrides: Sequence[str],
                      launched_by: str = "") -> str:
    """The parent run's description (markdown): what the study asks and how it ran."""
    study = plan.study
    lines = [f"SimCLR study `{study.name}`: {study.title} (paper: {study.paper}).", "",
             study.question, "",
             f"- scale: {plan.scale}, {len(plan.trials)} trials, Tune experiment "
             f"`{plan.experiment}`",
             f"- preset: {preset or 'none (params.yaml)'}",
             f"- overrides: {', '.join(f'`{o}`' for o in overrides) or 'none'}",
             f"- ranked on `{study.metric}` (validation split); no test label is read"]
    if launched_by:
        lines.append(f"- launched by: {launched_by}")
    lines += ["", f"Paper's finding: {study.finding}", "",
              "Each child run is one trial. Rerunning the same command resumes a stopped study "
              "(finished trials are not rerun). The table, plot and results.json are under "
              "`study/` when it finishes."]
    return "\n".join(lines)


def open_study_run(tracker: Tracker, plan: StudyPlan, cfg: PipelineConfig, root: Path, *,
                   preset: str | None = None, overrides: Sequence[str] = (),
                   launched_by: str = "") -> StudyRuns:
    """The study's parent run: the one an earlier, stopped attempt opened (reopened), or new."""
    from components.tracking.lineage import lineage_tags, source_tags

    client = tracker.client
    found = _find(client, tracker.experiment_id, **{EXPERIMENT_TAG: plan.experiment,
                                                    ROLE_TAG: "study"})
    name = plan.study.name
    if found is not None:
        client.update_run(found, status="RUNNING")
        for key, value in {**_process_tags(), "study_resumed": "true"}.items():
            client.set_tag(found, key, value)
        log.info("study %s: reopened MLflow run %s of experiment %s", name, found, plan.experiment)
        return StudyRuns(tracker.tracking_uri, tracker.experiment_id, found, name,
                         plan.experiment)
    tags = {**lineage_tags(cfg, root), **source_tags(root, f"simclr study {name}"),
            **_process_tags(), STUDY_TAG: name, EXPERIMENT_TAG: plan.experiment,
            ROLE_TAG: "study", "study_scale": plan.scale,
            MLFLOW_RUN_NOTE: study_description(plan, preset, overrides, launched_by)}
    run_name = f"study {name} · {plan.scale} · {datetime.now(UTC):%Y-%m-%d %H:%M}"
    run_id = client.create_run(tracker.experiment_id, run_name=run_name,
                               tags={k: str(v)[:5000] for k, v in tags.items()}).info.run_id
    log_params(client, run_id, {**cfg.flat(), "study.trials": len(plan.trials)})
    log.info("study %s: MLflow run %s (%s)", name, run_id, tracker.tracking_uri)
    return StudyRuns(tracker.tracking_uri, tracker.experiment_id, run_id, name, plan.experiment)


def trial_run(runs: StudyRuns, client: MlflowClient, name: str, overrides: dict[str, Any],
              cfg: PipelineConfig | None) -> str:
    """The trial's child run: found by its tags, else created (params logged once)."""
    found = _find(client, runs.experiment_id, **{EXPERIMENT_TAG: runs.experiment,
                                                 ROLE_TAG: "trial", TRIAL_TAG: name})
    if found is not None:
        return found
    tags = {MLFLOW_PARENT_RUN_ID: runs.parent_run_id, STUDY_TAG: runs.study,
            EXPERIMENT_TAG: runs.experiment, ROLE_TAG: "trial", TRIAL_TAG: name,
            **_process_tags()}
    run_id = client.create_run(runs.experiment_id, run_name=name, tags=tags).info.run_id
    params = {f"override.{key}": value for key, value in overrides.items()}
    log_params(client, run_id, {**(cfg.flat() if cfg is not None else {}), **params})
    return run_id


def logged_steps(client: MlflowClient, run_id: str) -> int:
    """The last step whose epoch metrics the run has (-1: none)."""
    history = client.get_metric_history(run_id, "loss")
    return max((metric.step for metric in history), default=-1)


def log_epochs(client: MlflowClient, run_id: str, rows: Sequence[dict[str, Any]],
               after_step: int = -1) -> int:
    """Per-epoch rows (:data:`EPOCH_KEYS`) with step > ``after_step`` as step metrics; the
    last step logged."""
    now, metrics, last = int(time.time() * 1000), [], after_step
    for row in rows:
        step = int(row.get("step", row.get("epoch", 0)))
        if step <= after_step:
            continue
        metrics += [Metric(key, float(row[key]), now, step) for key in EPOCH_KEYS if key in row]
        last = max(last, step)
    _log_metrics(client, run_id, metrics)
    return last


def complete_trial_run(runs: StudyRuns, client: MlflowClient, record: TrialRecord,
                       cfg: PipelineConfig | None = None) -> str:
    """The trial's child run with its whole result, ended; nothing is logged twice (a run
    already completed is returned as it is)."""
    run_id = trial_run(runs, client, record.trial.name, record.trial.overrides, cfg)
    run = client.get_run(run_id)
    if run.data.tags.get(LOGGED_TAG) == "true":
        return run_id
    last = log_epochs(client, run_id, record.history, logged_steps(client, run_id))
    final_step = max(last, 0)
    now = int(time.time() * 1000)
    counters = {k: v for k, v in record.metrics.items() if is_counter(k)}
    _log_metrics(client, run_id, [Metric(k, float(v), now, final_step)
                                  for k, v in record.metrics.items() if not is_counter(k)])
    log_params(client, run_id, {k: int(v) if float(v).is_integer() else v
                                for k, v in counters.items()
                                if k not in run.data.params})
    client.set_tag(run_id, STATUS_TAG, record.status)
    if record.error:
        client.set_tag(run_id, "error", record.error[:5000])
    client.set_tag(run_id, LOGGED_TAG, "true")
    client.set_terminated(run_id, RUN_STATUS.get(record.status, "FAILED"))
    return run_id


def finish_study_run(runs: StudyRuns, client: MlflowClient, status: str, *,
                     files: Sequence[Path] = (), metrics: dict[str, float] | None = None,
                     tags: dict[str, str] | None = None) -> None:
    """End the parent run (FINISHED | FAILED | KILLED) with its report files and numbers."""
    try:
        now = int(time.time() * 1000)
        _log_metrics(client, runs.parent_run_id,
                     [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()])
        for key, value in (tags or {}).items():
            client.set_tag(runs.parent_run_id, key, str(value)[:5000])
        for path in files:
            client.log_artifact(runs.parent_run_id, str(path), "study")
    except Exception as err:  # noqa: BLE001 - the study's own outcome matters more
        log.warning("study %s: could not log its results to run %s: %s", runs.study,
                    runs.parent_run_id, err)
    client.set_terminated(runs.parent_run_id, status)


__all__ = ["EXPERIMENT_TAG", "ROLE_TAG", "STATUS_TAG", "STUDY_TAG", "TRIAL_TAG", "StudyRuns",
           "complete_trial_run", "finish_study_run", "log_epochs", "logged_steps",
           "open_study_run", "study_description", "trial_run"]
