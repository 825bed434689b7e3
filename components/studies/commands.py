"""``simclr study``: run one of the paper's studies (wired in by ``components.stages.cli``).

    simclr study temperature --preset study            # run (or resume) it; prints its table
    simclr study augmentations --preset study --list   # its trials and their overrides only
    simclr study loss --preset study-gpu --set study.max_concurrent_trials=8

Studies: augmentations, colour-strength, head, loss, temperature, batch-epochs
(``components/studies/grids.py``). An unknown study or a bad value (``--set``, or a trial's
override) is one ``error:`` line and exit status 2; SIGTERM/SIGINT stop it (exit 128 + N,
its MLflow run KILLED) and rerunning the same command resumes it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from components.config import PipelineConfig

Handler = Callable[[argparse.Namespace, PipelineConfig], int]


def _study(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    from components.logs import relayed
    from components.process_guard import signals_raise
    from components.studies.grids import study_named
    from components.studies.plan import StudyPlan
    from components.studies.report import RESULTS_MD
    from components.studies.runner import run_study

    study = study_named(args.name)
    plan = StudyPlan.of(study, cfg, content_hash="")  # every trial's configuration, validated
    if args.list:
        print(f"study {study.name} ({study.paper}), scale {plan.scale}: {len(plan.trials)} trials")
        for index, item in enumerate(plan.trials, start=1):
            sets = " ".join(f"{key}={_yaml(value)}" for key, value in item.overrides.items())
            print(f"{index:3d}  {item.trial.name}: {sets}")
        return 0
    with signals_raise():  # SIGTERM: the study's MLflow run ends KILLED, Ray shuts down
        outcome = run_study(args.name, cfg, preset=args.preset, overrides=args.overrides,
                            launched_by=f"simclr study {args.name}")
    if not relayed():  # under the flow the table is the flow's artifact
        print((outcome.folder / RESULTS_MD).read_text(), end="")
    return 0


def _yaml(value: object) -> str:
    """A value as ``--set`` takes it (YAML flow style: ``[crop, flip]``, ``true``)."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def _study_arguments(parser: argparse.ArgumentParser) -> None:
    from components.studies.grids import STUDIES

    parser.add_argument("name", metavar="STUDY", help=f"one of: {', '.join(STUDIES)}")
    parser.add_argument("--preset", default=None,
                        help="preset under presets/ or a YAML file merged over the params "
                             "(study: this machine, study-gpu: the paper's grids on a cluster)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override one key (repeatable)")
    parser.add_argument("--list", action="store_true",
                        help="print the study's trials and their overrides, run nothing")


COMMANDS: dict[str, tuple[str, Handler, Callable[[argparse.ArgumentParser], None]]] = {
    "study": ("run (or resume) one of the SimCLR paper's studies on Ray Tune", _study,
              _study_arguments),
}
