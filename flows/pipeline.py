"""The Prefect flow ``simclr-pipeline``: the pipeline's stages (``components.stage_api.STAGES``,
the same list as ``dvc.yaml``), in order, each as a task.

DVC owns "is this stage stale?". Each task asks ``dvc status <stage>`` (only that stage: its deps
include the outputs of the stages before it, so an upstream change that was just reproduced makes
it stale) and, when stale, runs ``dvc repro --single-item <stage>``, which runs ``simclr <stage>``
and updates ``dvc.lock``. An up-to-date stage is skipped. So ``dvc repro`` and the flow never
disagree, a second run with unchanged inputs recomputes nothing, and ``dvc.lock`` records every run.

Presets and overrides are applied the way ``dvc exp run -S`` applies them: the merged config is
validated (a bad key fails the flow before any stage, naming the key) and written into the
project's ``params.yaml`` (only when it changes anything; comments and key order are kept), so
the stages, DVC's params dependencies and the recorded lineage all see the same values.

A run first refreshes the sources' fingerprint (stage ``fingerprint``, which ``ingest`` depends on,
run under the runner in the flow's process; not part of the returned outcomes) and asks DVC once
whether any selected stage is stale; when none
is (nothing new in the sources, no code or params change) it logs that and returns without
opening an MLflow run, so a weekly schedule leaves no empty runs behind.

MLflow: one parent run per flow run that runs something (tagged with the Prefect flow-run id;
named, described and given the headline metrics, results table and key plots by
``components.tracking.runs.start_pipeline_run``/``finish_pipeline_run``); every stage's run is
its child through ``SIMCLR_PARENT_RUN_ID``. The run's outcome (stages, registry decision, the
results table's headline) is published as the markdown artifact ``simclr-results`` with a link to
the parent run, and every run, also a failed or a no-op one, ends with a short closing summary
(:mod:`flows.summary`).

Logs: each stage's output is relayed line by line through Prefect's logger, at the line's own
level (:class:`components.logs.LineLevels`: a Ray warning is a WARNING); the stage is told so
(``SIMCLR_LOG_RELAYED=1``) and writes no timestamps and no metric dumps. DVC's answer to "what is
stale" is one line per check (its JSON at debug level).

Safety (infra/README.md, "What each failure does"): the flow holds the checkout's run lock
(:mod:`components.run_lock`) and its stages run under it; RUNNING MLflow runs of dead processes
are swept first. A failed stage gets its previous outputs back from the DVC cache; a run that
fails before any stage ran leaves ``params.yaml`` as it was. Each ``dvc`` command runs in its own
process group, stopped with everything it started when the flow is interrupted.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from components.config import PipelineConfig, apply_to_params_file
from components.errors import EXIT_BAD_INPUT, ConfigError
from components.logs import RELAYED_ENV, LineLevels
from components.process_guard import stop_process_tree
from components.run_lock import RunLock, run_lock
from components.stage_api import PARENT_RUN_ENV, STAGE_NAMES
from flows.summary import RunRecord, closing_summary, registry_outcome, results_markdown

FLOW_NAME = "simclr-pipeline"
ARTIFACT_KEY = "simclr-results"
SKIPPED = "skipped (up to date)"
RAN = "ran"
TAIL_LINES = 20
SOURCE_CHECK = "fingerprint"  # the always-run stage whose output tells DVC the sources changed

# Stages that touch a network or a cluster (S3 sources, Ray workers, the model registry) and can
# fail transiently; the others are deterministic functions of their inputs.
RETRIES = {"ingest": 2, "pretrain": 2, "register": 2}
VENV_BIN = Path(sys.executable).parent


class StageFailed(RuntimeError):
    """A stage's ``dvc`` command failed; ``bad_input`` when ``simclr`` rejected its input (exit 2)."""

    def __init__(self, stage: str, returncode: int, tail: list[str], bad_input: bool):
        self.stage, self.returncode, self.bad_input = stage, returncode, bad_input
        kind = "bad input, not retried" if bad_input else f"exit status {returncode}"
        super().__init__(f"stage {stage} failed ({kind}):\n" + "\n".join(tail))


# ----------------------------------------------------------------------------- config
def read_stage_order(project: Path) -> list[str]:
    """The pipeline's stages in order (``STAGES``; dvc.yaml holds the same, contract-tested)."""
    dvc_yaml = project / "dvc.yaml"
    if not dvc_yaml.is_file():
        raise ConfigError(f"{dvc_yaml}: file not found (is project_dir a checkout of the project?)")
    return list(STAGE_NAMES)


def select_stages(order: list[str], wanted: list[str] | None) -> list[str]:
    if not wanted:
        return order
    unknown = [name for name in wanted if name not in order]
    if unknown:
        raise ConfigError(f"stages: unknown {', '.join(unknown)}; the pipeline has {', '.join(order)}")
    return [name for name in order if name in wanted]


def apply_params(project: Path, preset: str | None, overrides: list[str]) -> PipelineConfig:
    """Merge ``preset`` and ``overrides`` into ``params.yaml``, validate, write it back if changed.

    Like ``dvc exp run -S``: only the given keys change (defaults are not written out), so DVC's
    params dependencies see exactly the changed values; comments and key order stay.
    """
    return apply_to_params_file(project / "params.yaml", preset, overrides)


# ----------------------------------------------------------------------------- dvc
# The stage's output is relayed line by line: no timestamps of its own, no progress bars
# (redrawn with \r, each redraw would be a line), no colour.
RELAYED_OUTPUT_ENV = {RELAYED_ENV: "1", "TQDM_DISABLE": "1",
                      "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "RAY_COLOR_PREFIX": "0",
                      "NO_COLOR": "1"}


def dvc_env(parent_run_id: str | None, lock: RunLock) -> dict[str, str]:
    """The stage subprocess environment: venv first on PATH (``simclr``), MLflow parent, the run
    lock's token (the stage runs under the flow's lock), no analytics, relayed output."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1", **RELAYED_OUTPUT_ENV, **lock.child_env()}
    if parent_run_id:
        env[PARENT_RUN_ENV] = parent_run_id
    flow_run_id = flow_run.id
    if flow_run_id:
        env["PREFECT__FLOW_RUN_ID"] = str(flow_run_id)  # lineage tag of each stage's MLflow run
    return env


def run_logged(stage: str, args: list[str], project: Path, env: dict[str, str],
               echo: bool = True) -> list[str]:
    """Run ``args`` in ``project``, streaming its output to the Prefect logger; the output lines.

    Each line is logged at its own level (:class:`~components.logs.LineLevels`: warnings as
    warnings), without a timestamp of its own; ``echo=False`` logs every line at debug level.
    Raises :class:`StageFailed` with the last lines of output when it exits non-zero. The command
    runs in its own process group: if this process is interrupted (SIGTERM/SIGINT raise
    :class:`~components.process_guard.Terminated`), it is stopped with every process it started
    before re-raising.
    """
    import logging

    logger = get_run_logger()
    levels = LineLevels()
    lines: list[str] = []
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    proc = subprocess.Popen(args, cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            for line in raw.rstrip("\n").split("\r"):  # progress bars redraw with \r
                if line.strip():
                    level, text = levels(line)
                    logger.log(level if echo else logging.DEBUG, "%s", text)
                    lines.append(line)
                    tail.append(line)
        returncode = proc.wait()
    except BaseException:
        stop_process_tree(proc)
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    if returncode != 0:
        bad_input = any(f"exited with {EXIT_BAD_INPUT}" in line for line in tail)
        raise StageFailed(stage, returncode, list(tail), bad_input)
    return lines


def stale_stages(stages: list[str], project: Path, env: dict[str, str],
                 label: str = "status") -> dict[str, Any]:
    """DVC's answer for these stages (one ``dvc status``): ``{stage: what changed}``, stale only.

    Its JSON goes to the debug log; :func:`describe_stale` is the line a person reads.
    """
    import json

    out = run_logged(label, [str(VENV_BIN / "dvc"), "status", "--json", *stages], project, env,
                     echo=False)
    documents = [line for line in out if line.lstrip().startswith("{")]
    status = json.loads(documents[-1]) if documents else {}
    return {stage: status[stage] for stage in stages if status.get(stage)}


def stage_is_stale(stage: str, project: Path, env: dict[str, str]) -> Any:
    """DVC's answer for this one stage: ``{}`` when up to date, else what changed."""
    return stale_stages([stage], project, env, stage).get(stage) or {}


def describe_changes(changes: Any, limit: int = 2) -> str:
    """DVC's status entry of one stage, short: ``deps changed: a, b (+3)``, ``params changed:
    pretrain.epochs``, ``outs changed: x``, ``always changed``, ``changed command``."""
    if not isinstance(changes, list):
        return str(changes)
    parts: list[str] = []

    def named(what: str, names: list[str]) -> None:
        more = f" (+{len(names) - limit})" if len(names) > limit else ""
        parts.append(f"{what}: {', '.join(names[:limit])}{more}")

    for entry in changes:
        if isinstance(entry, str):
            parts.append(entry)
            continue
        for kind, paths in (entry or {}).items():
            files, params = [], []
            for path, state in (paths or {}).items():
                if isinstance(state, dict):  # a params file: {key: "modified" | "new" | ...}
                    params += list(state)
                else:
                    files.append(path)
            what = kind.removeprefix("changed ")
            if files:
                named(f"{what} changed", files)
            if params:
                named("params changed", params)
    return "; ".join(parts) or "changed"


def describe_stale(stale: dict[str, Any], locked: set[str] | None = None) -> str:
    """One line for DVC's answer: ``stale: ingest (deps changed: ...), report, register (never
    run)``; a stage missing from ``locked`` (the stages ``dvc.lock`` records) is ``never run``."""
    def why(stage: str, changes: Any) -> str:
        return "never run" if locked is not None and stage not in locked else describe_changes(changes)

    groups: list[tuple[list[str], str]] = []  # neighbours with the same reason share it
    for stage, changes in stale.items():
        reason = why(stage, changes)
        if groups and groups[-1][1] == reason:
            groups[-1][0].append(stage)
        else:
            groups.append(([stage], reason))
    return "stale: " + ", ".join(f"{', '.join(stages)} ({reason})" for stages, reason in groups)


def locked_stages(project: Path) -> set[str]:
    """The stages ``dvc.lock`` records (a run of each is on record)."""
    lock = project / "dvc.lock"
    if not lock.is_file():
        return set()
    return set((yaml.safe_load(lock.read_text()) or {}).get("stages") or {})


# ----------------------------------------------------------------------------- tasks
def retry_unless_bad_input(task_: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry unless ``simclr`` rejected the stage's input."""
    error = state.data if isinstance(state.data, BaseException) else None
    if error is None:
        with contextlib.suppress(Exception):
            error = state.result(raise_on_failure=False)
    return not (isinstance(error, StageFailed) and error.bad_input)


def locked_outs_missing(stage: str, project: Path) -> bool:
    """True when an output ``dvc.lock`` records for ``stage`` is missing from the checkout."""
    lock = project / "dvc.lock"
    if not lock.is_file():
        return False
    entry = ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}).get(stage) or {}
    return any(not (project / out["path"]).exists() for out in entry.get("outs") or [])


def restore_outputs(stage: str, project: Path, env: dict[str, str]) -> None:
    """After a failed stage: its previous outputs (as ``dvc.lock`` records them) from the cache.

    DVC deletes a stage's outputs before running it; ``dvc checkout`` brings back the versions
    the last successful run recorded. Never raises: the stage's own failure is what matters.
    """
    if not locked_outs_missing(stage, project):
        return
    logger = get_run_logger()
    try:
        run_logged(stage, [str(VENV_BIN / "dvc"), "checkout", stage], project, env)
        logger.info("stage %s: previous outputs restored from the DVC cache", stage)
    except StageFailed as err:
        logger.warning("stage %s: could not restore its previous outputs: %s", stage, err)


@task(task_run_name="{stage}", retry_condition_fn=retry_unless_bad_input)
def run_stage(stage: str, project_dir: str, parent_run_id: str | None) -> str:
    """One stage: ``dvc repro --single-item <stage>`` when DVC says it is stale, else skip."""
    logger = get_run_logger()
    project = Path(project_dir)
    with run_lock(project, f"flow {FLOW_NAME}, stage {stage}") as lock:  # re-entrant: the flow's
        env = dvc_env(parent_run_id, lock)
        changes = stage_is_stale(stage, project, env)
        if not changes:
            logger.info("stage %s: %s", stage, SKIPPED)
            return SKIPPED
        reason = describe_changes(changes) if stage in locked_stages(project) else "never run"
        logger.info("stage %s: running (%s)", stage, reason)
        try:
            run_logged(stage, [str(VENV_BIN / "dvc"), "repro", "--single-item", stage], project, env)
        except StageFailed:
            restore_outputs(stage, project, env)
            raise
    return RAN


@task(name=f"stage-{SOURCE_CHECK}", task_run_name=SOURCE_CHECK)
def check_sources_task(project_dir: str) -> dict[str, float]:
    """Stage ``fingerprint`` under the runner, in this process (no MLflow run, no DVC lock taken:
    it only lists the sources), so DVC's next answer sees new source files; its metrics."""
    from components.config import load_config
    from components.stages.runner import run_stage as run_stage_body

    project = Path(project_dir)
    with contextlib.chdir(project):  # cfg.paths are relative to the project
        result = run_stage_body(load_config(project / "params.yaml"), SOURCE_CHECK, track=False)
    get_run_logger().info("sources checked: %s", result.metrics or "bundled sources only")
    return result.metrics


def stage_task(stage: str, retry_backoff_s: float) -> Any:
    retries = RETRIES.get(stage, 0)
    return run_stage.with_options(
        name=f"stage-{stage}", retries=retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=retry_backoff_s) if retries else 0)


# ----------------------------------------------------------------------------- tracking
def publish_outcome(project: Path, cfg: PipelineConfig, outcomes: dict[str, str], record: RunRecord,
                    tracker: Any, artifact: bool = True) -> None:
    """The run's ``simclr-results`` artifact (``artifact``) and its closing summary (the last log
    record). Never raises: a failure here must not mask the stages' outcome."""
    logger = get_run_logger()
    registry = None
    with contextlib.suppress(Exception):
        registry = registry_outcome(cfg, project, tracker.client)
    if artifact:
        try:
            create_markdown_artifact(results_markdown(cfg, project, outcomes, record, registry),
                                     key=ARTIFACT_KEY, description="SimCLR pipeline run: stages, "
                                     "registry decision, results")
        except Exception as err:  # noqa: BLE001 - never mask the stage's own failure
            logger.warning("could not publish the %s artifact: %s", ARTIFACT_KEY, err)
    try:
        summary = closing_summary(cfg, project, outcomes, record, registry, ARTIFACT_KEY)
    except Exception as err:  # noqa: BLE001
        summary = f"pipeline {record.status}: {outcomes} (no summary: {err})"
    if record.status in ("FINISHED", "NOTHING_TO_DO"):
        logger.info("%s", summary)
    else:
        logger.error("%s", summary)


# ----------------------------------------------------------------------------- flow
@flow(name=FLOW_NAME, log_prints=True)
def simclr_pipeline(
    preset: str | None = None,
    overrides: list[str] | None = None,
    project_dir: str | None = None,
    stages: list[str] | None = None,
    retry_backoff_s: float = 10.0,
) -> dict[str, str]:
    """Run the stale stages of ``dvc.yaml`` in order; returns ``{stage: "ran" | "skipped ..."}``.

    Args:
        preset: a preset under ``presets/`` (or a YAML path) merged into ``params.yaml``.
        overrides: ``key.path=value`` settings merged after the preset (``dvc exp run -S``).
        project_dir: the project checkout (a git + DVC repo); default: the working directory.
        stages: run only these stages (in pipeline order); default: all of ``dvc.yaml``.
        retry_backoff_s: first retry delay of the retried stages (doubles each retry).
    """
    project = Path(project_dir or os.getcwd()).resolve()
    with run_lock(project, f"flow {FLOW_NAME}"):
        params = project / "params.yaml"
        params_before = params.read_bytes() if params.is_file() else None
        outcomes: dict[str, str] = {}
        try:
            return _run_pipeline(project, preset, overrides, stages, retry_backoff_s, outcomes)
        except BaseException:
            if params_before is not None and RAN not in outcomes.values():
                restore_params(params, params_before)  # no stage ran on the new values
            raise


def restore_params(params: Path, content: bytes) -> None:
    if params.read_bytes() != content:
        tmp = params.with_suffix(".yaml.tmp")
        tmp.write_bytes(content)
        tmp.replace(params)
        get_run_logger().info("%s restored: no stage ran with the new values", params)


def _run_pipeline(project: Path, preset: str | None, overrides: list[str] | None,
                  stages: list[str] | None, retry_backoff_s: float,
                  outcomes: dict[str, str]) -> dict[str, str]:
    from components.tracking.runs import (
        Tracker,
        finish_pipeline_run,
        start_pipeline_run,
        sweep_stale_runs,
    )

    logger = get_run_logger()
    selected = select_stages(read_stage_order(project), stages)
    cfg = apply_params(project, preset, list(overrides or []))
    logger.info("project %s, stages %s", project, ", ".join(selected))
    with contextlib.chdir(project):
        tracker = Tracker.from_config(cfg, project)
        swept = sweep_stale_runs(cfg, tracker=tracker)  # we hold the run lock: dead processes' runs
    if swept:
        logger.info("marked %d MLflow run(s) of dead processes FAILED: %s", len(swept),
                    ", ".join(swept))
    check_sources = SOURCE_CHECK in selected or "ingest" in selected
    selected = [stage for stage in selected if stage != SOURCE_CHECK]
    if check_sources:  # ingest depends on the sources' fingerprint: refresh it first
        check_sources_task(str(project))
    try:
        with run_lock(project, f"flow {FLOW_NAME}, status") as lock:
            stale = stale_stages(selected, project, dvc_env(None, lock)) if selected else {}
    except StageFailed as err:  # e.g. DVC's repository lock is held: each stage asks again
        logger.warning("could not ask DVC what is stale (%s); running the stages, each checks "
                       "itself", str(err).splitlines()[0])
        stale = dict.fromkeys(selected, "unknown")
    if not stale:  # DVC's answer first: a run with nothing new opens no MLflow run
        outcomes.update({stage: SKIPPED for stage in selected})
        publish_outcome(project, cfg, outcomes, RunRecord("NOTHING_TO_DO", tracker.tracking_uri,
                                                          tracker.experiment_id, None),
                        tracker, artifact=False)
        return outcomes
    logger.info("%s", describe_stale(stale, locked_stages(project)))

    with contextlib.chdir(project):  # lineage (git, dvc.lock, manifests) is read from the cwd
        tracking_uri, experiment_id = tracker.tracking_uri, tracker.experiment_id
        parent = start_pipeline_run(cfg, tracker, preset=preset, overrides=list(overrides or []),
                                    stages=selected,
                                    launched_by=f"Prefect flow run {flow_run.name or 'local'}")
        tracker.client.set_tag(parent, "prefect_flow_run_id", str(flow_run.id or ""))
    logger.info("MLflow parent run %s (%s)", parent, tracking_uri)
    status = "FAILED"
    try:
        for stage in selected:
            outcomes[stage] = stage_task(stage, retry_backoff_s)(stage, str(project), parent)
        status = "FINISHED"
    except BaseException as err:
        if not isinstance(err, Exception):  # a signal (ours or Prefect's), Ctrl-C, exit
            status = "KILLED"
        raise
    finally:
        with contextlib.chdir(project):  # dvc.lock, headline metrics, results and plots
            finish_pipeline_run(parent, cfg, tracker, status, project)
        pending = [stage for stage in selected if stage not in outcomes]
        if pending and status != "FINISHED":
            outcomes[pending.pop(0)] = "failed" if status == "FAILED" else "stopped"
        outcomes.update({stage: "not run" for stage in pending})
        record = RunRecord(status, tracking_uri, experiment_id, parent, flow_run.ui_url)
        publish_outcome(project, cfg, outcomes, record, tracker)
    return outcomes
