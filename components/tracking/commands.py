"""Registry and run-maintenance subcommands of ``simclr`` (wired in by the ``simclr`` CLI, ``components.stages.cli``).

    simclr models                 # versions, aliases, date, headline metrics, gate decision
    simclr promote 3              # champion -> 3, old champion -> previous-champion
    simclr rollback               # champion -> the one before it (also after a move in the MLflow UI)
    simclr sweep-runs [--older-than 86400]   # RUNNING runs of dead processes -> FAILED
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from components.config import PipelineConfig

Handler = Callable[[argparse.Namespace, PipelineConfig], int]


def _models(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    from components.tracking.registry import list_versions
    from components.tracking.runs import Tracker

    rows = list_versions(Tracker.from_config(cfg).client, cfg.registry.model_name)
    print(format_table(rows, cfg.registry.gate.metric))
    return 0


def headline_columns(rows: list[dict], gate_metric: str) -> list[str]:
    """The metric columns of ``simclr models``: the gate metric (validation) and its test
    counterpart always, then the fine-tune test top-1s and the kNN top-1 that any version has."""
    from components.tracking.gate import paired_test_metric

    names = {k for row in rows for k in row["metrics"]}
    finetune = sorted(n for n in names if n.startswith("finetune_") and n.endswith("_top1")
                      and "_val_" not in n)
    return [gate_metric, paired_test_metric(gate_metric), *finetune,
            *(["knn_top1"] if "knn_top1" in names else [])]


def format_table(rows: list[dict], gate_metric: str) -> str:
    """Plain-text table, newest version first: version, aliases, created (UTC), the headline
    metrics (:func:`headline_columns`), which metric decided the gate and how (``decided by``),
    git commit, and what the registry decided (``decision``, consistent with the aliases)."""
    columns = headline_columns(rows, gate_metric)
    header = ["version", "aliases", "created (UTC)", *columns, "decided by", "git", "decision"]
    lines = [header]
    for row in rows:
        decided = (f"{row['gate_metric']} ({row['gate']})" if row.get("gate_metric")
                   else row.get("gate") or "-")
        lines.append([row["version"], ",".join(row["aliases"]) or "-", _created(row["created"]),
                      *(f"{row['metrics'][n]:.4f}" if n in row["metrics"] else "-" for n in columns),
                      decided, row["git_commit"][:8] or "-", row.get("decision", "-")])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True))
                     .rstrip() for line in lines)


def _created(timestamp_ms: int | None) -> str:
    from datetime import UTC, datetime

    if not timestamp_ms:
        return "-"
    return f"{datetime.fromtimestamp(timestamp_ms / 1000, UTC):%Y-%m-%d %H:%M}"


def _promote(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    from components.tracking.registry import promote
    from components.tracking.runs import Tracker

    old = promote(Tracker.from_config(cfg), cfg.registry.model_name, args.version)
    print(f"{cfg.registry.model_name}: champion -> version {args.version}"
          + (f" (previous-champion -> {old})" if old and old != args.version else ""))
    return 0


def _rollback(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    from components.tracking.registry import CHAMPION, alias_version, rollback
    from components.tracking.runs import Tracker

    tracker = Tracker.from_config(cfg)
    before = alias_version(tracker.client, cfg.registry.model_name, CHAMPION)
    version = rollback(tracker, cfg.registry.model_name)
    print(f"{cfg.registry.model_name}: champion rolled back to version {version}"
          + (f" (from version {before.version})" if before is not None else ""))
    return 0


def _sweep(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    from components.tracking.runs import sweep_stale_runs

    swept = sweep_stale_runs(cfg, args.older_than)
    print(f"marked {len(swept)} stale run(s) FAILED" + (": " + ", ".join(swept) if swept else ""))
    return 0


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _version_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", help="model version number to make champion")


def _sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--older-than", type=float, default=24 * 3600, metavar="SECONDS",
                        help="sweep runs of other hosts older than this (default: %(default)s); "
                             "runs of dead processes on this host are swept at any age")


COMMANDS: dict[str, tuple[str, Handler, Callable[[argparse.ArgumentParser], None]]] = {
    "models": ("list the registered encoder's versions, aliases and metrics", _models,
               _no_arguments),
    "promote": ("make VERSION the champion (old champion -> previous-champion)", _promote,
                _version_argument),
    "rollback": ("move champion back to the version before it (previous-champion, or the one a "
                 "move in the MLflow UI replaced)", _rollback, _no_arguments),
    "sweep-runs": ("mark RUNNING runs of killed processes as FAILED", _sweep, _sweep_arguments),
}
