"""What a flow run says when it ends: the closing summary (log) and the ``simclr-results`` artifact.

Both are built from what the run left behind, never from the stages' logs: the outcomes of the
stages, the headline rows of the results table (the evaluation stages' ``metrics.json``,
:func:`components.evaluation.report.headline_markdown`), the registry's decision (version from
``outputs/register/metrics.json``, aliases and ``gate`` / ``gate_reason`` tags from the registry)
and where to look: the MLflow run (a server's URL, or the ``mlflow ui`` command and the page of
the run for a local store) and the Prefect artifact. Reading the registry never fails a run.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import PipelineConfig
from components.stage_api import StagePaths, read_metrics

LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


@dataclass(frozen=True)
class RegistryOutcome:
    """The ``register`` stage's decision about the run's encoder."""

    model: str
    version: str
    aliases: tuple[str, ...]
    gate: str  # "passed" | "refused" | "" (not read)
    reason: str

    def line(self) -> str:
        aliases = ", ".join(self.aliases) or "no alias"
        gate = f"gate {self.gate}" if self.gate else "gate not recorded"
        return f"{self.model} version {self.version} ({aliases}); {gate}" + (
            f": {self.reason}" if self.reason else "")


def registry_outcome(cfg: PipelineConfig, project: Path, client: Any) -> RegistryOutcome | None:
    """The registered version (``outputs/register/metrics.json``) with its aliases and gate tags
    as the registry has them now; None when ``register`` has not run."""
    metrics = read_metrics(project / StagePaths.of(cfg).metrics_file("register"))
    if "registered_version" not in metrics:
        return None
    name, version = cfg.registry.model_name, str(int(metrics["registered_version"]))
    gate = "passed" if metrics.get("promoted") else "refused"
    aliases: tuple[str, ...] = ()
    reason = ""
    with contextlib.suppress(Exception):  # the summary reports; it never fails the run
        found = client.get_model_version(name, version)
        aliases = tuple(sorted(found.aliases or ()))
        gate, reason = found.tags.get("gate", gate), found.tags.get("gate_reason", "")
    return RegistryOutcome(name, version, aliases, gate, reason)


def headline_table(cfg: PipelineConfig, project: Path) -> str | None:
    """The results table's headline rows (markdown), or None before the evaluation stages ran."""
    from components.evaluation.report import headline_markdown
    from components.stages.report import evaluation_metrics

    paths = StagePaths.of(cfg)
    metrics = evaluation_metrics(StagePaths(project / paths.data, project / paths.outputs))
    return headline_markdown(metrics) if metrics else None


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page: on the tracking server, or on ``mlflow ui`` for a local store."""
    base = (tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://"))
            else LOCAL_MLFLOW_UI)
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def mlflow_how_to_open(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """One line: the run's URL, preceded for a local store by the command that serves it."""
    url = mlflow_run_url(tracking_uri, experiment_id, run_id)
    if tracking_uri.startswith(("http://", "https://")):
        return url
    return f"`mlflow ui --backend-store-uri {tracking_uri}`, then open {url}"


def prefect_artifact_where(key: str, flow_run_url: str | None) -> str:
    """Where the artifact is: the flow run's page on a Prefect server, else the CLI command
    (Prefect's temporary API keeps its database under ``PREFECT_HOME``)."""
    if flow_run_url and os.environ.get("PREFECT_API_URL"):
        return f"artifact {key}: {flow_run_url} (Artifacts tab)"
    home = os.environ.get("PREFECT_HOME")
    prefix = f"PREFECT_HOME={home} " if home else ""
    return f"artifact {key}: `{prefix}prefect artifact inspect {key}`"


def outcomes_line(outcomes: dict[str, str]) -> str:
    """``ingest ran, subsets skipped, ...`` (the ``skipped (up to date)`` wording shortened)."""
    return ", ".join(f"{stage} {outcome.split(' (')[0]}" for stage, outcome in outcomes.items())


def completed(outcomes: dict[str, str], stage: str) -> bool:
    """``stage`` is in this run and its outputs are current (it ran, or DVC skipped it)."""
    outcome = outcomes.get(stage, "")
    return outcome == "ran" or outcome.startswith("skipped")


@dataclass(frozen=True)
class RunRecord:
    """Where a flow run's MLflow parent run is (``run_id`` None: none was opened)."""

    status: str  # FINISHED | FAILED | KILLED | NOTHING_TO_DO
    tracking_uri: str
    experiment_id: str
    run_id: str | None
    flow_run_url: str | None = None


def closing_summary(cfg: PipelineConfig, project: Path, outcomes: dict[str, str],
                    record: RunRecord, registry: RegistryOutcome | None, artifact_key: str) -> str:
    """The run's last log record: a few lines a person reads to know what happened and where."""
    results = StagePaths.of(cfg).results
    if record.status == "NOTHING_TO_DO":
        lines = ["nothing to do: the sources are unchanged and every stage is up to date "
                 "(no MLflow run opened)"]
        if (project / results).is_file():
            lines.append(f"  latest results: {results}")
        if registry is not None:
            lines.append(f"  registry: {registry.line()}")
        return "\n".join(lines)
    verdict = {"FINISHED": "finished", "FAILED": "FAILED", "KILLED": "stopped"}.get(
        record.status, record.status)
    lines = [f"pipeline {verdict}: {outcomes_line(outcomes)}"]
    table = headline_table(cfg, project) if completed(outcomes, "report") else None
    if table:
        lines += [f"results (every column: {results}):", *(f"  {row}" for row in table.splitlines())]
    if registry is not None and completed(outcomes, "register"):
        lines.append(f"registry: {registry.line()}")
    if record.run_id:
        lines.append(f"MLflow run {record.run_id} ({record.status}): "
                     f"{mlflow_how_to_open(record.tracking_uri, record.experiment_id, record.run_id)}")
    lines.append(f"Prefect {prefect_artifact_where(artifact_key, record.flow_run_url)}")
    return "\n".join(lines)


def results_markdown(cfg: PipelineConfig, project: Path, outcomes: dict[str, str],
                     record: RunRecord, registry: RegistryOutcome | None) -> str:
    """The ``simclr-results`` artifact: the MLflow run, outcomes, registry decision, the headline
    table (four columns, so none is clipped) and the results table's two-column reference
    sections; every column of the results table is in ``results.md`` and the MLflow run."""
    results = project / StagePaths.of(cfg).results  # an absolute paths.outputs stays absolute
    parts = ["# SimCLR pipeline run", ""]
    if record.run_id:
        url = mlflow_run_url(record.tracking_uri, record.experiment_id, record.run_id)
        parts += [f"MLflow run [{record.run_id}]({url}) ({record.status}, store "
                  f"`{record.tracking_uri}`)", ""]
    parts += ["| stage | outcome |", "|---|---|"]
    parts += [f"| {stage} | {outcome} |" for stage, outcome in outcomes.items()]
    parts += ["", "## Registry", ""]
    if registry is None:
        parts += ["_Nothing registered (the register stage has not run)._"]
    else:
        parts += ["| model | version | aliases | gate | reason |", "|---|---:|---|---|---|",
                  f"| {registry.model} | {registry.version} | {', '.join(registry.aliases) or '-'}"
                  f" | {registry.gate or '-'} | {registry.reason or '-'} |"]
    parts += ["", "## Results", ""]
    table = headline_table(cfg, project) if completed(outcomes, "report") else None
    if table and results.is_file():
        parts += [table, "", f"Every column (val, budgets, baseline recipes): `{results}`.", ""]
        sections = results.read_text().split("\n## ")[1:]  # the reference tables after the main
        parts += [f"### {section.strip()}\n" for section in sections]
    else:
        parts += [f"_No results table from this run ({results} is written by the report stage)._"]
    return "\n".join(parts).rstrip() + "\n"
