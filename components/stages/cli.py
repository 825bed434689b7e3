"""``simclr``: run one stage (as ``dvc repro`` does) or inspect the configuration.

    simclr ingest   [--params params.yaml] [--preset tiny] [--set pretrain.epochs=2 ...]
    simclr params   [--preset tiny]          # the merged, validated configuration as YAML
    simclr study temperature --preset study  # one of the paper's studies (components/studies)

A :class:`~components.errors.PipelineError` (bad config, bad data, registry refusal) prints one
``error: ...`` line and exits with status 2; anything else is a bug and keeps its traceback.

Run by hand a stage logs ``time level logger: message`` and prints its metrics as JSON; under the
flow (``SIMCLR_LOG_RELAYED=1``, :mod:`components.logs`) it logs ``level message`` (Prefect adds
the time) and the metrics go to the debug log. Commands other than the stages and ``params``
take only what they read: ``--params`` for the registry commands (model name, store), nothing
for the DVC remote commands.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

import yaml

from components.config import PipelineConfig, load_config
from components.errors import EXIT_BAD_INPUT, PipelineError
from components.logs import relayed, stage_log_format
from components.stage_api import STAGES

# Stages that write nothing into the checkout, so no run lock: `register` only changes the
# registry, whose alias updates have their own lock (concurrent registrations are supported).
UNLOCKED_STAGES = frozenset({"register"})
# An extra command whose arguments set this default to False reads no params file (its handler
# gets cfg=None): the DVC remote commands.
READS_PARAMS = "reads_params"
Command = Callable[[argparse.Namespace, PipelineConfig], int]
log = logging.getLogger(__name__)


def _add_params_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    _add_params_argument(parser)
    parser.add_argument("--preset", default=None,
                        help="preset name under presets/ or a YAML file merged over the params")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set pretrain.epochs=2 (repeatable)")


def _run_stage(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    from components.process_guard import signals_raise
    from components.run_lock import run_lock
    from components.stages.runner import run_stage

    with contextlib.ExitStack() as guards:
        guards.enter_context(signals_raise())  # SIGTERM: the stage's MLflow run ends FAILED
        if args.command not in UNLOCKED_STAGES:
            guards.enter_context(run_lock(".", f"simclr {args.command}"))
        result = run_stage(cfg, args.command)
    if result.metrics and relayed():  # the flow shows the results table at the end
        log.debug("metrics: %s", json.dumps(result.metrics, sort_keys=True))
    elif result.metrics:
        print(json.dumps(result.metrics, indent=2, sort_keys=True))
    return 0


def _print_params(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def build_parser(extra: dict[str, tuple[str, Command, Callable[[argparse.ArgumentParser], None]]]
                 | None = None) -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = argparse.ArgumentParser(prog="simclr", description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    handlers: dict[str, Command] = {}
    for stage in STAGES:
        sub = commands.add_parser(stage.name, help=stage.help, description=stage.help)
        _add_config_arguments(sub)
        handlers[stage.name] = _run_stage
    sub = commands.add_parser("params", help="print the merged, validated configuration as YAML")
    _add_config_arguments(sub)
    handlers["params"] = _print_params
    for name, (help_text, handler, add_arguments) in (extra or {}).items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        if sub.get_default(READS_PARAMS) is not False:
            _add_params_argument(sub)
        handlers[name] = handler
    return parser, handlers


def extra_commands() -> dict[str, tuple[str, Command, Callable[[argparse.ArgumentParser], None]]]:
    """Commands contributed by other modules (registry management, pipeline runs, studies)."""
    from components.studies.commands import COMMANDS as study_commands
    from components.tracking.commands import COMMANDS as tracking_commands
    from components.verify_remote import COMMANDS as remote_commands

    return {**tracking_commands, **remote_commands, **study_commands}


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = build_parser(extra_commands())
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format=stage_log_format())
    if not args.verbose:  # e.g. "Validating input example against model signature" per model
        # `import mlflow` (later, in the stage) resets its logger to this level; set now too
        # in case it is already imported
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("matplotlib").setLevel(logging.WARNING)  # "generated new fontManager"
    try:
        cfg = (load_config(args.params, getattr(args, "preset", None), getattr(args, "overrides", []))
               if hasattr(args, "params") else None)
        return handlers[args.command](args, cfg)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
