"""One study trial as a Ray Tune function trainable: pretrain in this process, then probe.

:func:`study_trial` runs where Tune places it, on the resources Tune reserved for it (one
Ray worker's: ``ray.cpus_per_worker`` CPUs, one GPU with ``ray.use_gpu``). It builds the
trial's configuration from its :class:`TrialJob` (the study's shared job, handed over with
``tune.with_parameters``: the base configuration and every trial's overrides), runs the shared pretraining loop in one process
(:func:`components.training.local_runner.run_local_pretraining`, world 1) and reports every
epoch to Tune, with a Tune checkpoint (the loop's training state) every
``pretrain.checkpoint_every`` epochs. Then the validation probes
(:mod:`components.studies.probe`) and one last report, whose checkpoint holds
:data:`SUMMARY_FILE` (metrics, history, cost) and the trained weights (:data:`MODEL_FILE`).

Restarts: Tune hands a resumed trial its latest checkpoint. A training state resumes the
loop where it stopped (same data order, schedule and augmentation draws); a summary means the
trial had finished, and it only reports that summary again. A loss that is not finite ends the
trial as ``diverged`` (a finding: its metrics say so), not as an error.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from components.config import PipelineConfig
from components.io import write_json
from components.studies.grids import SUPERVISED, Trial
from components.studies.report import TrialRecord
from components.training.loop import progress_logger, train_count

SUMMARY_FILE = "trial_summary.json"
MODEL_FILE = "model.pt"  # SimCLRModel state dict (encoder.* and head.*), torch.save
LOG_EVERY = 10**9  # steps between progress lines: only each epoch's "done" line
FINISHED, DIVERGED = "finished", "diverged"


@dataclass(frozen=True)
class TrialJob:
    """What Tune hands a trial: its name and the study's shared job (plain, JSON-able data)."""

    study: str
    name: str
    index: int  # position in the study's trial order (1-based)
    count: int
    base: dict[str, Any]  # the base configuration, dumped
    overrides: dict[str, Any]  # this trial's
    dataset: str  # the canonical data set folder, absolute (readable on every Ray node)
    subsets: str  # the subsets folder (val.txt), absolute
    probe_z: bool

    @classmethod
    def of(cls, name: str, job: dict[str, Any]) -> TrialJob:
        """Trial ``name`` of the study's ``job`` (:func:`study_job`)."""
        names = list(job["overrides"])
        return cls(job["study"], name, names.index(name) + 1, len(names), job["base"],
                   job["overrides"][name], job["dataset"], job["subsets"], job["probe_z"])

    def config(self) -> PipelineConfig:
        from components.studies.plan import trial_config

        return trial_config(self.base, self.overrides, self.name)


def study_job(study: str, base: dict[str, Any], overrides: dict[str, dict[str, Any]],
              dataset: str, subsets: str, probe_z: bool) -> dict[str, Any]:
    """What every trial of a study shares (``tune.with_parameters``: Tune's own config of a
    trial is its name only, so Tune's tables and files stay readable)."""
    return {"study": study, "base": base, "overrides": overrides, "dataset": dataset,
            "subsets": subsets, "probe_z": probe_z}


def param_space(names: list[str]) -> dict[str, Any]:
    """Tune's param space: a grid over the trial names."""
    from ray import tune

    return {"trial": tune.grid_search(names)}


def study_trial(config: dict[str, Any], job: dict[str, Any]) -> None:
    """The Ray Tune trainable of every study (see the module docstring); ``config["trial"]``
    names the trial of ``job`` (:func:`study_job`) to run."""
    from ray import tune

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # a line per checkpoint otherwise
    job = TrialJob.of(config["trial"], job)
    cfg = job.config()
    torch.set_num_threads(cfg.pretrain.threads_per_worker or max(1, int(cfg.ray.cpus_per_worker)))
    restored, summary = read_checkpoint(tune.get_checkpoint())
    if summary is not None:  # finished before the restart: nothing to redo
        progress_logger().info("study %s, trial %r: already finished; reporting its result "
                               "again", job.study, job.name)
        tune.report(summary["metrics"])
        return
    summary, model_state = run_trial(job, cfg, restored, report_epoch)
    with tempfile.TemporaryDirectory(prefix="study-trial-") as folder:
        if model_state is not None:
            torch.save(model_state, Path(folder) / MODEL_FILE)
        write_json(Path(folder) / SUMMARY_FILE, summary)
        tune.report(summary["metrics"], checkpoint=tune.Checkpoint.from_directory(folder))


def run_trial(job: TrialJob, cfg: PipelineConfig, restored: Any,
              report: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Pretrain (from ``restored``), probe: ``(summary, trained weights or None)``.

    ``report(metrics, state)`` receives every epoch's row (and the training state on
    checkpoint epochs). The summary (plain data): ``status`` (finished | diverged),
    ``metrics`` (floats: the probes, final loss and contrastive accuracy, cost), ``history``
    (one row per epoch), ``error`` (why it diverged), ``overrides``.
    """
    from components.data.store import CanonicalDataset
    from components.data.subsets import load_validation
    from components.evaluation.device import EvalRuntime
    from components.models.simclr import build_simclr_model
    from components.studies.probe import probe_trial
    from components.studies.supervised import train_supervised
    from components.training.local_runner import run_local_pretraining

    dataset = CanonicalDataset(job.dataset)
    val = load_validation(job.subsets, dataset)  # before training: bad data fails at once
    device = torch.device("cuda" if cfg.ray.use_gpu and torch.cuda.is_available() else "cpu")
    history: list[dict[str, Any]] = list(restored.history) if restored is not None else []
    progress = progress_logger()
    supervised = cfg.study.trial_method == SUPERVISED
    doing = ("supervised training (random init)" if supervised else
             f"resuming at epoch {restored.epoch} of" if restored is not None else "training")
    progress.info("study %s, trial %d/%d %r: %s %d epochs of %d images on %s", job.study,
                job.index, job.count, job.name, doing,
                cfg.pretrain.epochs, train_count(cfg, len(dataset.split("train"))), device)

    def on_epoch(metrics: dict[str, float], state: Any) -> None:
        history.append(dict(metrics))
        report(metrics, state)

    started = time.perf_counter()
    status, error, metrics = FINISHED, "", {}
    runtime = EvalRuntime.of(cfg, device)
    model = None
    if supervised:  # the reference: labels, no pretraining
        model, history, supervised_metrics = train_supervised(cfg, dataset, val, runtime)
        metrics.update(supervised_metrics)
    else:
        try:
            outcome = run_local_pretraining(cfg, job.dataset, restored=restored,
                                            report=on_epoch, device=device, log_every=LOG_EVERY)
            history = outcome.history
            height, _, channels = dataset.image_shape
            model = build_simclr_model(cfg.model, in_channels=channels, image_size=height)
            model.load_state_dict(outcome.model_state)
            model = runtime.place(model)
        except FloatingPointError as err:  # a loss that is not finite: the trial's result
            status, error = DIVERGED, str(err)
    evaluate_start = time.perf_counter()
    if model is not None:
        metrics.update(probe_trial(model, dataset, val, cfg, runtime, job.probe_z))
    done = time.perf_counter()
    last = history[-1] if history else {}
    metrics.update({
        "final_loss": float(last.get("loss", math.nan)),
        "final_contrastive_acc": float(last.get("contrastive_acc", math.nan)),
        "diverged": float(status == DIVERGED),
        "epochs_trained": float(len(history)),
        "pretrain_cpu_s": sum(float(row.get("epoch_cpu_s", 0.0)) for row in history),
        "pretrain_wall_s": sum(float(row.get("epoch_time_s", 0.0)) for row in history),
        "evaluate_s": done - evaluate_start,
        "attempt_s": done - started,
    })
    progress.info("study %s, trial %r: %s %s", job.study, job.name, status,
                ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.endswith("_top1")))
    summary = {"study": job.study, "trial": job.name, "status": status, "error": error,
               "metrics": metrics, "history": [_plain_row(row) for row in history],
               "overrides": job.overrides}
    weights = None if model is None else {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return summary, weights


def report_epoch(metrics: dict[str, float], state: Any) -> None:
    """One epoch to Tune; on checkpoint epochs the training state as a Tune checkpoint."""
    from ray import tune

    from components.training.checkpointing import save_training_state

    if state is None:
        tune.report(dict(metrics))
        return
    with tempfile.TemporaryDirectory(prefix="study-epoch-") as folder:
        save_training_state(folder, state)  # Tune copies the folder to storage before returning
        tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(folder))


def read_checkpoint(checkpoint: Any) -> tuple[Any, dict[str, Any] | None]:
    """``(training state or None, summary or None)`` of a Tune checkpoint (None: a fresh trial)."""
    from components.training.checkpointing import STATE_FILE, load_training_state

    if checkpoint is None:
        return None, None
    with checkpoint.as_directory() as folder:
        summary_path = Path(folder) / SUMMARY_FILE
        if summary_path.is_file():
            return None, json.loads(summary_path.read_text())
        state_path = Path(folder) / STATE_FILE
        return (load_training_state(folder) if state_path.is_file() else None), None


def read_summary(checkpoint: Any) -> dict[str, Any] | None:
    """The :data:`SUMMARY_FILE` of a trial's final Tune checkpoint (None before it finished)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = Path(folder) / SUMMARY_FILE
        return json.loads(path.read_text()) if path.is_file() else None


def record_of(trial: Trial, checkpoint: Any, error: str = "") -> TrialRecord:
    """What ``trial`` ended with, from its latest Tune checkpoint (``error``: Tune's word that
    it failed; a trial with neither a summary nor an error has not run to its end)."""
    summary = read_summary(checkpoint)
    if summary is not None:
        return TrialRecord(trial, summary["status"], dict(summary["metrics"]),
                           list(summary["history"]), summary.get("error", ""))
    return TrialRecord(trial, "error" if error else "not run", error=error)


def _plain_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, int | float) else v) for k, v in row.items()}


__all__ = ["DIVERGED", "FINISHED", "MODEL_FILE", "SUMMARY_FILE", "TrialJob", "param_space",
           "read_checkpoint", "read_summary", "record_of", "run_trial", "study_job",
           "study_trial"]
