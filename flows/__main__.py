"""``python -m flows``: run the ``simclr-pipeline`` flow once, on ``params.yaml`` as it is.

    python -m flows                                   # every stale stage, embedded defaults
    python -m flows --preset tiny --set pretrain.epochs=3 --stages ingest subsets

No Prefect server is needed: without ``PREFECT_API_URL`` Prefect starts a temporary local API
(its database under ``<project>/.prefect``). ``--preset``/``--set`` are written into
``params.yaml`` before any stage runs (as ``dvc exp run -S`` does).

The run logs through Prefect's console handler (stderr), one timestamp per line, in colour only
on a terminal, and ends with its closing summary (stages, results, registry decision, where the
MLflow run and the Prefect artifact are).

Exit status: 0 done; 2 bad input, or another run holds the checkout (one ``error:`` line);
128 + N when stopped by signal N (SIGTERM, SIGINT); 1 anything else. The checkout's run lock is
taken before Prefect starts, so two flows starting together never race on Prefect's database,
and a watchdog stops every process the run started once it ends, even by SIGKILL.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.errors import EXIT_BAD_INPUT

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
    if not sys.stderr.isatty():  # a log file or a pipe: no colour codes (Prefect's console is stderr)
        os.environ.setdefault("PREFECT_LOGGING_COLORS", "false")
    if not os.environ.get("PREFECT_API_URL"):  # set but empty: Prefect's events client fails
        os.environ.pop("PREFECT_API_URL", None)
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
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="wait up to SECONDS for another run of this checkout (default: refuse)")
    args = parser.parse_args(argv)
    project = Path(args.project_dir).resolve()
    if not (project / "dvc.yaml").is_file():
        print(f"error: {project / 'dvc.yaml'}: file not found (is --project-dir a checkout of the "
              "project?)", file=sys.stderr)
        return EXIT_BAD_INPUT

    command = " ".join(["python -m flows", *(sys.argv[1:] if argv is None else argv)])
    return run_guarded(project, command, args.wait, "pipeline", lambda: simclr_pipeline_state(args, project))


def simclr_pipeline_state(args: argparse.Namespace, project: Path) -> Any:
    from flows.pipeline import simclr_pipeline  # after the environment: Prefect reads it on import

    return simclr_pipeline(preset=args.preset, overrides=args.overrides, project_dir=str(project),
                           stages=args.stages, return_state=True)


def run_guarded(project: Path, command: str, wait_s: float, what: str,
                run: Callable[[], Any], check: Callable[[], None] | None = None) -> int:
    """A flow's command line: ``check`` (bad input raises), then ``run`` (the flow, returning
    its final state) under the checkout's run lock and the reaper, signals raising; returns the
    exit status (module docstring). Shared by ``python -m flows`` and ``python -m flows.study``."""
    from components.errors import PipelineError
    from components.process_guard import Terminated, signals_raise, start_reaper
    from components.run_lock import run_lock

    try:
        if check is not None:
            check()  # before Prefect starts
        with signals_raise(), run_lock(project, command, wait_s=wait_s):
            start_reaper()  # before Prefect starts its API server: every child carries the marker
            prepare_environment(project)
            return exit_status(run, what)
    except PipelineError as err:  # bad input, or another run holds the checkout
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Terminated as stop:
        print(f"error: {what} {stop}; its processes were stopped", file=sys.stderr)
        return int(stop.code)


def exit_status(run: Callable[[], Any], what: str) -> int:
    """Run the flow (``run`` returns its final state) and turn how it ended into an exit status;
    a stopping signal raises :class:`Terminated`."""
    import prefect.main  # noqa: F401  sets up Prefect's log handlers, which the filter below needs
    from prefect.exceptions import TerminationSignal

    from components.process_guard import Terminated

    hide_bad_input_tracebacks()
    # MLflow's own handler would print "Creating initial MLflow database tables..." in its own
    # format (a second timestamp) when the flow opens a new store
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    try:
        state = run()
    except TerminationSignal as stop:
        raise Terminated(stop.signal) from stop
    if not state.is_completed():
        error = failure_of(state)
        if isinstance(error, TerminationSignal):  # Prefect's handler, during the flow run
            raise Terminated(error.signal) from error
        if isinstance(error, BaseException) and not isinstance(error, Exception):
            raise error  # Terminated: the signal's exit status
        bad_input = bad_input_line(error)
        if bad_input:
            print(f"error: {bad_input}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"error: {what} {state.name.lower()}: {state.message}", file=sys.stderr)
        return 1
    return 0  # the flow's closing summary said what ran, the results and where to look


def failure_of(state: Any) -> BaseException | None:
    try:
        error = state.result(raise_on_failure=False)
    except BaseException as err:  # noqa: BLE001 - a crashed state re-raises its cause
        return err
    return error if isinstance(error, BaseException) else None


def is_bad_input(error: BaseException | None) -> bool:
    from components.errors import PipelineError
    from flows.pipeline import StageFailed

    return isinstance(error, PipelineError) or (isinstance(error, StageFailed) and error.bad_input)


def bad_input_line(error: BaseException | None) -> str | None:
    """The one line naming the bad input when the run failed on it, else None."""
    from flows.pipeline import StageFailed

    if not is_bad_input(error):
        return None
    if isinstance(error, StageFailed):  # the stage's own `error: ...` line, from its output
        lines = [line for line in str(error).splitlines() if line.startswith("error: ")]
        return f"stage {error.stage}: {lines[-1][len('error: '):]}" if lines else str(error)
    return str(error)


class _NoBadInputTraceback(logging.Filter):
    """Bad input is the user's to fix: its log records keep their message, not a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and is_bad_input(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
        return True


def hide_bad_input_tracebacks() -> None:
    for handler in {*logging.getLogger().handlers, *logging.getLogger("prefect").handlers}:
        handler.addFilter(_NoBadInputTraceback())


if __name__ == "__main__":
    sys.exit(main())
