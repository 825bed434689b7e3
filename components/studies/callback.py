"""A Ray Tune callback that logs every trial into its MLflow child run as the study runs.

It runs in the driver (Tune calls it from its event loop), so only the driver writes to the
MLflow store. On trial start: the child run (found again after a restart, else created); on
each epoch's result: that epoch's metrics; on completion or error: the whole result
(:func:`components.studies.tracking.complete_trial_run`). Tune pickles it into the
experiment's state (a restored experiment brings it back), so it holds plain data only and
opens its MLflow client lazily. Logging problems are warnings: a study never stops for them,
and the runner logs every result again (idempotently) when the experiment ends.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import tune

from components.studies.grids import Trial
from components.studies.tracking import (
    StudyRuns,
    complete_trial_run,
    log_epochs,
    logged_steps,
    trial_run,
)

log = logging.getLogger(__name__)


class StudyRunsCallback(tune.Callback):
    """Live MLflow logging of a study's trials (see the module docstring)."""

    def __init__(self, runs: StudyRuns, trials: dict[str, Trial], job: dict[str, Any]) -> None:
        """``trials``: the plan's trials by name; ``job``: what the trials were handed
        (:func:`components.studies.trial.study_job`), for their configurations."""
        self.runs, self.trials, self.job = runs, trials, job
        self._client: Any = None
        self._run_ids: dict[str, str] = {}  # Tune trial id -> MLflow run id
        self._last_step: dict[str, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"runs": self.runs, "trials": self.trials, "job": self.job}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["runs"], state["trials"], state["job"])

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.runs.client()
        return self._client

    def _name(self, trial: Any) -> str:
        return str(trial.config["trial"])

    def _run_id(self, trial: Any) -> str:
        if trial.trial_id not in self._run_ids:
            from components.studies.trial import TrialJob

            name = self._name(trial)
            cfg = TrialJob.of(name, self.job).config()
            run_id = trial_run(self.runs, self.client, name, self.trials[name].overrides, cfg)
            self._run_ids[trial.trial_id] = run_id
            self._last_step[trial.trial_id] = logged_steps(self.client, run_id)
        return self._run_ids[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        try:
            self._run_id(trial)
        except Exception as err:  # noqa: BLE001 - never stop a study for its logging
            log.warning("study %s: MLflow child run of trial %r: %s", self.runs.study,
                        self._name(trial), err)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if "linear_val_top1" in result or "loss" not in result:  # the final report: on complete
            return
        try:
            run_id = self._run_id(trial)
            self._last_step[trial.trial_id] = log_epochs(
                self.client, run_id, [result], self._last_step[trial.trial_id])
        except Exception as err:  # noqa: BLE001
            log.warning("study %s: epoch metrics of trial %r: %s", self.runs.study,
                        self._name(trial), err)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._complete(trial, trials, error="")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._complete(trial, trials, error=f"trial failed (Tune: {trial.error_file or '-'})")

    def _complete(self, trial: Any, trials: list, error: str) -> None:
        from components.studies.trial import record_of

        name = self._name(trial)
        try:
            record = record_of(self.trials[name], trial.checkpoint, error)
            self._run_id(trial)
            complete_trial_run(self.runs, self.client, record)
        except Exception as err:  # noqa: BLE001
            log.warning("study %s: MLflow result of trial %r: %s", self.runs.study, name, err)
            return
        ended = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        done = len(ended | {trial.trial_id})  # Tune marks this one after its callbacks
        value = record.metrics.get("linear_val_top1")
        log.info("study %s: trial %r %s%s (%d of %d trials ended)", self.runs.study, name,
                 record.status, f", linear_val_top1 {value:.4f}" if isinstance(value, float)
                 else "", done, len(self.trials))


__all__ = ["StudyRunsCallback"]
