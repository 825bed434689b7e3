"""Run one study on Ray Tune: start its experiment, or restore it after a stop.

:func:`run_study` plans the trials (every configuration validated first), checks that the
data stages' outputs are there, then runs a Tune experiment named after the plan
(:class:`~components.studies.plan.StudyPlan`) under ``<ray.storage_path>/studies/``:

- Tune schedules the trials on their resources (``tune.with_resources``: ``ray.cpus_per_worker``
  CPUs each, one GPU each with ``ray.use_gpu``; at most ``study.max_concurrent_trials`` at
  once), retries a failed one from its checkpoint (``ray.max_failures``) and reports to the
  MLflow callback (:mod:`components.studies.callback`);
- when the experiment's folder exists (``Tuner.can_restore``), :meth:`Tuner.restore` continues
  it: finished trials keep their results and are not rerun, unfinished ones resume from their
  latest checkpoint, errored ones get another go.

Then every trial's result (read back from its final checkpoint) goes into its MLflow child run
(idempotent), the report (:mod:`components.studies.report`) is written to
``<study.results_dir>/<experiment>/`` and attached to the parent run. One driver per
experiment: a second ``simclr study`` of the same plan refuses while the first runs (an
``flock`` in the results folder).

Ray: ``cfg.ray.address`` / ``$RAY_ADDRESS`` or a local instance, as the pretrain stage; a local
instance started here is shut down at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.config import PipelineConfig
from components.errors import DataError
from components.studies.grids import Study, study_named
from components.studies.plan import StudyPlan
from components.studies.report import TrialRecord, best_cell, cells, write_report

log = logging.getLogger(__name__)
STUDIES_FOLDER = "studies"  # under ray.storage_path


@dataclass(frozen=True)
class StudyData:
    """The data a study reads: the canonical data set and the validation split's indices."""

    dataset_path: Path
    subsets_path: Path
    content_hash: str
    val: np.ndarray


@dataclass(frozen=True)
class StudyOutcome:
    plan: StudyPlan
    records: list[TrialRecord]
    folder: Path  # <study.results_dir>/<experiment>
    files: list[Path]  # results.json, results.md, the plot
    parent_run_id: str


def open_study_data(cfg: PipelineConfig) -> StudyData:
    """The outputs of the ``ingest`` and ``subsets`` stages for ``cfg`` (absolute paths), or a
    :class:`DataError` saying how to make them."""
    from components.data.store import CanonicalDataset
    from components.data.subsets import load_validation
    from components.stage_api import StagePaths

    paths = StagePaths.of(cfg)
    dataset_path = paths.dataset(cfg.data.source).resolve()
    hint = ("a study reads the data stages' outputs: run `dvc repro subsets` (or `simclr ingest` "
            "and `simclr subsets` with the same --preset/--set), or `python -m flows.study`, "
            "which runs them")
    if not (dataset_path / "manifest.json").is_file():
        raise DataError(f"{dataset_path}: no canonical data set; {hint}")
    dataset = CanonicalDataset(dataset_path)
    try:
        val = load_validation(paths.subsets, dataset)
    except DataError as err:
        raise DataError(f"{err}; {hint}") from None
    return StudyData(dataset_path, paths.subsets.resolve(), dataset.content_hash, val)


def plan_study(name: str, cfg: PipelineConfig, content_hash: str) -> StudyPlan:
    """The plan of study ``name`` (ConfigError: unknown study, or a trial's bad value)."""
    return StudyPlan.of(study_named(name), cfg, content_hash)


def studies_storage(cfg: PipelineConfig) -> str:
    """Where Tune keeps the studies' experiments: ``<ray.storage_path>/studies`` (absolute)."""
    from components.training.ray_driver import resolve_storage

    return f"{resolve_storage(cfg.ray.storage_path).rstrip('/')}/{STUDIES_FOLDER}"


def run_study(name: str, cfg: PipelineConfig, *, root: Path | None = None,
              preset: str | None = None, overrides: Sequence[str] = (),
              launched_by: str = "") -> StudyOutcome:
    """Run (or resume) study ``name`` on ``cfg``; see the module docstring."""
    from components.run_lock import run_lock
    from components.studies.tracking import finish_study_run, open_study_run
    from components.tracking.runs import Tracker

    root = (root or Path.cwd()).resolve()
    StudyPlan.of(study_named(name), cfg, content_hash="")  # bad names and values fail first
    data = open_study_data(cfg)
    plan = plan_study(name, cfg, data.content_hash)
    folder = Path(cfg.study.results_dir).resolve() / plan.experiment
    folder.mkdir(parents=True, exist_ok=True)
    with run_lock(folder, f"simclr study {name}"):
        tracker = Tracker.from_config(cfg, root)
        runs = open_study_run(tracker, plan, cfg, root, preset=preset, overrides=overrides,
                              launched_by=launched_by)
        client = runs.client()
        try:
            records = fit(plan, cfg, data, runs)
            _complete_child_runs(runs, client, plan, records)
            files = write_report(plan.study, plan, records, folder,
                                 extra={"mlflow_run_id": runs.parent_run_id,
                                        "tracking_uri": runs.tracking_uri})
        except BaseException as err:
            status = "FAILED" if isinstance(err, Exception) else "KILLED"
            finish_study_run(runs, client, status, tags={"error": f"{type(err).__name__}: {err}"})
            raise
        finish_study_run(runs, client, "FINISHED", files=files,
                         metrics=_summary_metrics(plan.study, records),
                         tags=_summary_tags(plan.study, records))
    log.info("study %s: %d trials; report %s", name, len(records), folder / "results.md")
    return StudyOutcome(plan, records, folder, files, runs.parent_run_id)


def fit(plan: StudyPlan, cfg: PipelineConfig, data: StudyData, runs: Any) -> list[TrialRecord]:
    """Run the plan's Tune experiment (new or restored); one record per trial, in plan order."""
    from components.training.ray_driver import connect_ray, quiet_ray_logs, storage_filesystem

    # Ray folds lines that differ only in words with digits ("trial 3/8 'tau=0.5'...") into
    # one "[repeated Nx]": each trial's lines are worth reading (before Ray is imported)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    quiet_ray_logs()
    from ray import tune

    from components.studies.callback import StudyRunsCallback
    from components.studies.trial import param_space, record_of, study_job, study_trial

    storage = studies_storage(cfg)
    path = f"{storage}/{plan.experiment}"
    filesystem = storage_filesystem(path)  # s3:// on a non-AWS endpoint: explicit, scheme-less
    ray_storage = storage.split("://", 1)[1] if filesystem is not None else storage
    ray_path = f"{ray_storage}/{plan.experiment}"
    resources = {"cpu": cfg.ray.cpus_per_worker, "gpu": 1 if cfg.ray.use_gpu else 0}
    # num_to_keep=1 makes Tune write its experiment state after every trial checkpoint, so a
    # trial's final (summary) checkpoint is on record as soon as it is made: a study killed
    # right after a trial finished does not redo it. Tune warns when that happens more than
    # once in 5 s (short trials); the snapshots are small, so the warning is off.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    job = study_job(plan.study.name, plan.base.model_dump(mode="json"),
                    {item.trial.name: item.overrides for item in plan.trials},
                    str(data.dataset_path), str(data.subsets_path), plan.study.probe_z)
    trainable = tune.with_resources(tune.with_parameters(study_trial, job=job), resources)
    with _ray(cfg, connect_ray):
        if tune.Tuner.can_restore(ray_path, storage_filesystem=filesystem):
            log.info("study %s: resuming Tune experiment %s (finished trials are kept)",
                     plan.study.name, path)
            tuner = tune.Tuner.restore(ray_path, trainable, resume_unfinished=True,
                                       resume_errored=True, storage_filesystem=filesystem)
        else:
            log.info("study %s: %d trials in Tune experiment %s (%s per trial)", plan.study.name,
                     len(plan.trials), path, resources)
            tuner = tune.Tuner(
                trainable, param_space=param_space(plan.names),
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=cfg.study.max_concurrent_trials, reuse_actors=True,
                    trial_name_creator=tune_trial_name, trial_dirname_creator=tune_trial_dirname),
                run_config=tune.RunConfig(
                    name=plan.experiment, storage_path=ray_storage,
                    storage_filesystem=filesystem, verbose=1,
                    callbacks=[StudyRunsCallback(runs, {t.trial.name: t.trial
                                                        for t in plan.trials}, job)],
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures)))
        grid = tuner.fit()
        by_name = {}
        for result in grid:
            name = result.config["trial"]
            error = f"{type(result.error).__name__}: {result.error}" if result.error else ""
            by_name[name] = record_of(plan.trial_named(name).trial, result.checkpoint, error)
    return [by_name.get(item.trial.name, TrialRecord(item.trial, "not run"))
            for item in plan.trials]


@contextlib.contextmanager
def _ray(cfg: PipelineConfig, connect: Any) -> Iterator[None]:
    """Connected to Ray for the block; an instance this call connected to is left at the end."""
    import ray

    already = ray.is_initialized()
    connect(cfg)
    try:
        yield
    finally:
        if not already:
            ray.shutdown()


def tune_trial_name(trial: Any) -> str:
    """Tune's name of a trial: the study's own trial name."""
    return str(trial.config["trial"])


def tune_trial_dirname(trial: Any) -> str:
    """``nt-xent-l2-norm-tau-0.1-3f2a1c``: a file-safe form of the trial's name, made unique
    by a hash of the name itself."""
    import hashlib
    import re

    name = str(trial.config["trial"])
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-").lower()[:60]
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


def _complete_child_runs(runs: Any, client: Any, plan: StudyPlan,
                         records: list[TrialRecord]) -> None:
    """Every trial with a result in its child run (the callback's work, made sure of)."""
    from components.studies.tracking import complete_trial_run

    for item, record in zip(plan.trials, records, strict=True):
        if record.status == "not run":
            continue
        complete_trial_run(runs, client, record, item.config)


def _summary_metrics(study: Study, records: list[TrialRecord]) -> dict[str, float]:
    best = best_cell(cells(study, records))
    metrics = {"trials": float(len(records)),
               "trials_finished": float(sum(r.status == "finished" for r in records)),
               "trials_diverged": float(sum(r.status == "diverged" for r in records))}
    if best is not None:
        metrics[f"best_{study.metric}"] = best.value
    return metrics


def _summary_tags(study: Study, records: list[TrialRecord]) -> dict[str, str]:
    best = best_cell(cells(study, records))
    if best is None:
        return {}
    label = ", ".join(part for part in best.labels if part != "-")
    return {"best_cell": f"{label} [{best.variant}]" if best.variant else label}


__all__ = ["StudyData", "StudyOutcome", "fit", "open_study_data", "studies_storage",
           "plan_study", "run_study", "tune_trial_dirname", "tune_trial_name"]
