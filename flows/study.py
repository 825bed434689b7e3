"""The Prefect flow ``simclr-study``: one of the SimCLR paper's studies, end to end.

    python -m flows.study temperature --preset study
    python -m flows.study augmentations --preset study --set study.max_concurrent_trials=2

1. The data stages (``fingerprint``, ``ingest``, ``subsets``) exactly as the pipeline flow runs
   them: DVC says whether each is stale, ``dvc repro --single-item`` runs it (the same tasks).
   A study never writes ``params.yaml`` (its preset is not the pipeline's configuration), so
   its ``--preset``/``--set`` must leave ``data``, ``subsets`` and ``paths`` as ``params.yaml``
   has them; otherwise the flow refuses before any work, naming the sections.
2. The study: ``python -m components.stages.cli study NAME`` (``simclr study``) in the project,
   its output relayed line by line at each line's level; in its own process group, stopped
   with everything it started (Ray included) when the flow is stopped. Ray Tune runs the
   trials and resumes a stopped study (:mod:`components.studies.runner`).
3. The markdown artifact ``simclr-study-<name>``: the results table and the MLflow run.

The flow holds the checkout's run lock (no pipeline run re-ingests the data under a running
study). Deployments: ``prefect.yaml`` (``paper-study``) and ``python -m flows.deploy deploy
--flow study``. Exit status of ``python -m flows.study``: 0 done, 2 bad input (one ``error:``
line), 128 + N when stopped by signal N, 1 anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from components.config import PipelineConfig, load_config
from components.errors import EXIT_BAD_INPUT, ConfigError
from components.run_lock import run_lock

FLOW_NAME = "simclr-study"
DATA_STAGES = ("ingest", "subsets")
DATA_SECTIONS = ("data", "subsets", "paths")  # what the data stages read from params.yaml


def study_config(project: Path, study: str, preset: str | None,
                 overrides: list[str]) -> PipelineConfig:
    """The study's configuration, validated with every trial; a :class:`ConfigError` if it is
    not a study, a value is bad, or it changes the data sections of ``params.yaml``."""
    from components.studies.grids import study_named
    from components.studies.plan import StudyPlan

    params = project / "params.yaml"
    cfg = load_config(params, preset, overrides)
    StudyPlan.of(study_named(study), cfg, content_hash="")
    pipeline = load_config(params)
    changed = [name for name in DATA_SECTIONS
               if getattr(cfg, name).model_dump() != getattr(pipeline, name).model_dump()]
    if changed:
        raise ConfigError(f"{', '.join(changed)}: the study's --preset/--set change what "
                          f"params.yaml sets; a study reads the data stages' outputs for "
                          f"params.yaml, so set these in params.yaml first")
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.study", description=__doc__.split("\n")[0])
    parser.add_argument("study", metavar="STUDY", help="augmentations, colour-strength, head, "
                        "loss, temperature or batch-epochs")
    parser.add_argument("--preset", default=None, help="preset under presets/ (study, study-gpu)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key of the study's configuration (repeatable)")
    parser.add_argument("--project-dir", default=".", help="the project checkout (default: .)")
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="wait up to SECONDS for another run of this checkout (default: refuse)")
    args = parser.parse_args(argv)
    project = Path(args.project_dir).resolve()

    from flows.__main__ import run_guarded

    def check() -> None:
        if not (project / "dvc.yaml").is_file():
            raise ConfigError(f"{project / 'dvc.yaml'}: file not found (is --project-dir a "
                              "checkout of the project?)")
        study_config(project, args.study, args.preset, args.overrides)

    command = " ".join(["python -m flows.study", *(sys.argv[1:] if argv is None else argv)])
    return run_guarded(project, command, args.wait, "study", lambda: simclr_study_state(args, project),
                       check)


def simclr_study_state(args: argparse.Namespace, project: Path) -> object:
    from flows.study import simclr_study  # this file as a module: Prefect is imported now

    return simclr_study(args.study, preset=args.preset, overrides=args.overrides,
                        project_dir=str(project), return_state=True)


if __name__ == "__main__":  # before the flow below: Prefect reads its settings on import
    sys.exit(main())


# ----------------------------------------------------------------------------- the flow
# Imported only by ``import flows.study`` (deployments, main() once the environment is set):
# ``python -m flows.study`` has returned above before Prefect reads its settings here.
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402

from flows.pipeline import (  # noqa: E402
    StageFailed,
    check_sources_task,
    dvc_env,
    run_logged,
    stage_task,
)


@task(name="study", task_run_name="study-{study}")
def run_study_task(study: str, project_dir: str, preset: str | None,
                   overrides: list[str]) -> None:
    """``simclr study`` in the project as a relayed subprocess (see the module docstring)."""
    project = Path(project_dir)
    args = [sys.executable, "-m", "components.stages.cli", "study", study,
            *(["--preset", preset] if preset else []),
            *(arg for override in overrides for arg in ("--set", override))]
    with run_lock(project, f"flow {FLOW_NAME}, study {study}") as lock:
        try:
            run_logged(f"study-{study}", args, project, dvc_env(None, lock))
        except StageFailed as err:  # its exit status says whether the input was bad
            raise StageFailed(err.stage, err.returncode, str(err).splitlines()[1:],
                              err.returncode == EXIT_BAD_INPUT) from None


def results_folder(project: Path, cfg: PipelineConfig, study: str) -> Path:
    """``<study.results_dir>/<experiment>`` of the study on the project's current data."""
    from components.studies.runner import open_study_data, plan_study

    with contextlib.chdir(project):  # cfg.paths and study.results_dir are relative to it
        plan = plan_study(study, cfg, open_study_data(cfg).content_hash)
        return Path(cfg.study.results_dir).resolve() / plan.experiment


def study_markdown(project: Path, cfg: PipelineConfig, folder: Path) -> str:
    """The artifact: where the study's MLflow run and files are, then its ``results.md``."""
    from components.studies.report import RESULTS_JSON, RESULTS_MD
    from components.tracking.runs import Tracker
    from flows.summary import mlflow_run_url

    run_id = json.loads((folder / RESULTS_JSON).read_text())["mlflow_run_id"]
    with contextlib.chdir(project):
        tracker = Tracker.from_config(cfg, project)
    url = mlflow_run_url(tracker.tracking_uri, tracker.experiment_id, run_id)
    return f"MLflow run [{run_id}]({url}); files: `{folder}`\n\n" + (folder / RESULTS_MD).read_text()


@flow(name=FLOW_NAME, log_prints=True)
def simclr_study(study: str, preset: str | None = None, overrides: list[str] | None = None,
                 project_dir: str | None = None, retry_backoff_s: float = 10.0) -> str:
    """Run one study of the paper on the project's data; returns its results folder.

    Args:
        study: augmentations | colour-strength | head | loss | temperature | batch-epochs.
        preset: a preset under ``presets/`` (e.g. ``study``, ``study-gpu``) or a YAML path.
        overrides: ``key.path=value`` settings merged after the preset.
        project_dir: the project checkout (a git + DVC repo); default: the working directory.
        retry_backoff_s: first retry delay of the retried data stage (ingest).
    """
    logger = get_run_logger()
    project = Path(project_dir or os.getcwd()).resolve()
    overrides = list(overrides or [])
    with run_lock(project, f"flow {FLOW_NAME} {study}"):
        cfg = study_config(project, study, preset, overrides)
        check_sources_task(str(project))
        for stage in DATA_STAGES:
            stage_task(stage, retry_backoff_s)(stage, str(project), None)
        run_study_task(study, str(project), preset, overrides)
        folder = results_folder(project, cfg, study)
    create_markdown_artifact(study_markdown(project, cfg, folder), key=f"simclr-study-{study}",
                             description=f"SimCLR paper study {study}: results on validation")
    logger.info("study %s finished: %s (results.md, results.json, plot)", study, folder)
    return str(folder)
