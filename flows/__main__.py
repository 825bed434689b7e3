"""``python -m flows``: run the ``simclr-pipeline`` flow once, on ``params.yaml`` as it is.

    python -m flows                                   # every stale stage, embedded defaults
    python -m flows --preset tiny --set pretrain.epochs=3 --stages ingest subsets

No Prefect server is needed: without ``PREFECT_API_URL`` Prefect starts a temporary local API
(its database under ``<project>/.prefect``). ``--preset``/``--set`` are written into
``params.yaml`` before any stage runs (as ``dvc exp run -S`` does).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLI_PROMPT": "false",
    # the temporary API migrates its database on first use: slow on a busy 2-core machine
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "DVC_NO_ANALYTICS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def prepare_environment(project: Path) -> None:
    """Settings for a self-contained local run; values already set in the environment win."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("PREFECT_HOME", str(project / ".prefect"))
    venv_bin = str(Path(sys.executable).parent)  # `simclr` and `dvc` for the stages
    if venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default=None, help="preset under presets/ merged into params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key in params.yaml (repeatable)")
    parser.add_argument("--stages", nargs="+", default=None, metavar="STAGE",
                        help="run only these stages of dvc.yaml (default: all)")
    parser.add_argument("--project-dir", default=".", help="the project checkout (default: .)")
    args = parser.parse_args(argv)
    project = Path(args.project_dir).resolve()
    prepare_environment(project)

    from flows.pipeline import simclr_pipeline  # after the environment: Prefect reads it on import

    state = simclr_pipeline(preset=args.preset, overrides=args.overrides,
                            project_dir=str(project), stages=args.stages, return_state=True)
    if not state.is_completed():
        print(f"error: pipeline {state.name.lower()}: {state.message}", file=sys.stderr)
        return 1
    for stage, outcome in state.result().items():
        print(f"{stage:12s} {outcome}")
    print_results_table(project)
    return 0


def print_results_table(project: Path) -> None:
    """The report stage's table, so a run ends with its numbers next to their baselines."""
    from components.config import load_config
    from components.stage_api import StagePaths

    table = project / StagePaths.of(load_config(project / "params.yaml")).results
    if table.is_file():
        print(f"\n{table.read_text()}")


if __name__ == "__main__":
    sys.exit(main())
