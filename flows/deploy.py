"""Scheduled runs of ``simclr-pipeline``: serve it from this process, or deploy it to a work pool.

    python -m flows.deploy serve  [--cron "0 3 * * 1" | --interval 3600] [--preset tiny] ...
    python -m flows.deploy deploy [--pool simclr-process] [--cron ... | --interval ...] ...
    python -m flows.deploy deploy --flow study --study augmentations --preset study

``--flow study`` deploys the study flow ``simclr-study`` (``flows/study.py``) instead, as
``simclr-study/paper-study``, without a schedule unless ``--cron``/``--interval`` is given: runs
start on demand (``prefect deployment run simclr-study/paper-study -p study=loss``).

``serve`` is the quick start: this process registers the deployment and runs its scheduled runs
itself (Ctrl-C stops it). ``deploy`` creates the process work pool if it is missing and the
deployment ``simclr-pipeline/weekly-retrain`` through the API; a worker runs its runs:
``prefect worker start --pool simclr-process``. Both need a real Prefect server
(``prefect server start`` and ``PREFECT_API_URL``): the temporary API of ``python -m flows``
does not run schedules. ``prefect deploy --name weekly-retrain`` (``prefect.yaml``) does the same
as ``deploy`` from the command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

DEPLOYMENT = "weekly-retrain"
STUDY_DEPLOYMENT = "paper-study"
WORK_POOL = "simclr-process"
WEEKLY_CRON = "0 3 * * 1"  # Mondays 03:00 UTC
ENTRYPOINT = "flows/pipeline.py:simclr_pipeline"
STUDY_ENTRYPOINT = "flows/study.py:simclr_study"
CONCURRENCY_LIMIT = 1  # one run of the checkout at a time; the flow's run lock enforces it too


def flow_parameters(args: argparse.Namespace, project: Path) -> dict[str, Any]:
    if args.flow == "study":
        return {"study": args.study, "preset": args.preset, "overrides": args.overrides,
                "project_dir": str(project)}
    return {"preset": args.preset, "overrides": args.overrides, "stages": args.stages,
            "project_dir": str(project)}


def schedule_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.interval:
        return {"interval": args.interval}
    if args.flow == "study" and not args.cron:
        return {}  # studies run on demand
    return {"cron": args.cron or WEEKLY_CRON}


def chosen_flow(args: argparse.Namespace) -> tuple[Any, str, str]:
    """(flow, entrypoint, description) of ``--flow``."""
    if args.flow == "study":
        from flows.study import simclr_study

        return simclr_study, STUDY_ENTRYPOINT, "One of the SimCLR paper's studies on Ray Tune"
    from flows.pipeline import simclr_pipeline

    return simclr_pipeline, ENTRYPOINT, "Retrain, evaluate and register the SimCLR encoder"


def ensure_work_pool(name: str) -> bool:
    """Create the process work pool ``name`` unless it exists; True when it was created."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(
                name=name, type="process",
                base_job_template=ProcessWorker.get_default_base_job_template()))
            return True


def deploy(args: argparse.Namespace, project: Path) -> str:
    """The deployment on the work pool (created if missing); returns the deployment id."""
    flow_, entrypoint, description = chosen_flow(args)
    if not os.environ.get("PREFECT_API_URL"):
        raise SystemExit("error: deploy needs a Prefect server: `prefect server start`, then "
                         "export PREFECT_API_URL=http://127.0.0.1:4200/api")
    if ensure_work_pool(args.pool):
        print(f"created process work pool {args.pool}")
    source = flow_.from_source(source=str(project), entrypoint=entrypoint)
    deployment_id = source.deploy(
        name=args.name, work_pool_name=args.pool, parameters=flow_parameters(args, project),
        build=False, push=False, print_next_steps=False, ignore_warnings=True,
        tags=["simclr"], description=description,
        concurrency_limit=CONCURRENCY_LIMIT, **schedule_options(args))
    print(f"deployment {flow_.name}/{args.name} ({deployment_id}); start a worker: "
          f"prefect worker start --pool {args.pool}")
    return str(deployment_id)


def serve(args: argparse.Namespace, project: Path) -> None:
    """Register the deployment and run its scheduled runs in this process until interrupted."""
    flow_, _, _ = chosen_flow(args)
    flow_.serve(name=args.name, parameters=flow_parameters(args, project),
                tags=["simclr"], global_limit=CONCURRENCY_LIMIT, **schedule_options(args))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["serve", "deploy"])
    parser.add_argument("--flow", choices=["pipeline", "study"], default="pipeline",
                        help="simclr-pipeline (default) or simclr-study")
    parser.add_argument("--study", default=None, help="with --flow study: which study")
    parser.add_argument("--name", default=None,
                        help=f"deployment name (default: {DEPLOYMENT}, or {STUDY_DEPLOYMENT})")
    parser.add_argument("--pool", default=WORK_POOL, help="process work pool (default: %(default)s)")
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--cron", default=None, help=f"cron schedule (default: {WEEKLY_CRON!r}, UTC)")
    when.add_argument("--interval", type=float, default=None, help="run every N seconds instead")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--stages", nargs="+", default=None, metavar="STAGE")
    parser.add_argument("--project-dir", default=".")
    args = parser.parse_args(argv)
    if args.flow == "study" and not args.study:
        parser.error("--flow study needs --study NAME")
    args.name = args.name or (STUDY_DEPLOYMENT if args.flow == "study" else DEPLOYMENT)
    project = Path(args.project_dir).resolve()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    if args.command == "deploy":
        deploy(args, project)
    else:
        serve(args, project)
    return 0


if __name__ == "__main__":
    sys.exit(main())
