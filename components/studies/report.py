"""A study's findings: its cells (seeds and tuned variants folded in), table, plot and JSON.

Input: one :class:`TrialRecord` per trial (what the trial reported, or why it has no result).
A cell's value is the mean over its seeds of ``study.metric`` (a validation top-1); a cell
with variants is represented by its best variant on that mean, as the paper tunes each loss's
temperature or margin. Only finished trials count; a diverged trial (a loss that was not
finite) shows as ``diverged``.

Files (:func:`write_report`, into ``<study.results_dir>/<experiment>/``): ``results.json``
(everything: the study's question and the paper's finding, every cell and trial with metrics,
history and overrides, cost), ``results.md`` (the cell table and every trial) and
``<study>.png`` (heat map, bars or curves, by ``Study.plot``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from components.io import write_json
from components.studies.grids import MOOT, Study, Trial, is_supervised
from components.studies.plan import StudyPlan

RESULTS_JSON, RESULTS_MD = "results.json", "results.md"
# Columns of the per-trial table (shown when any trial has them), as (metric, header).
TRIAL_COLUMNS = (("linear_val_top1", "linear h (val)"), ("linear_z_val_top1", "linear z (val)"),
                 ("knn_val_top1", "kNN h (val)"),
                 ("supervised_val_top1", "supervised classifier (val)"),
                 ("final_contrastive_acc", "contrastive acc"),
                 ("final_loss", "final loss"), ("epochs_trained", "epochs"),
                 ("pretrain_cpu_s", "pretrain CPU s"), ("supervised_s", "supervised s"),
                 ("evaluate_s", "probe s"))


@dataclass(frozen=True)
class TrialRecord:
    """What one trial ended with: ``status`` is finished, diverged, error or not run."""

    trial: Trial
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""

    @property
    def counts(self) -> bool:
        return self.status == "finished" and _finite(self.metrics.get("linear_val_top1"))


@dataclass(frozen=True)
class Cell:
    """One cell of the table: its representative variant and its trials' numbers."""

    labels: tuple[str, ...]
    variant: str  # the best variant on validation ("" without variants)
    value: float  # mean over seeds of the study's metric (nan: no finished trial)
    spread: float  # max - min over seeds (0 with one seed)
    seeds: int  # finished trials behind ``value``
    diverged: int  # trials of the cell (all variants) whose loss was not finite
    means: dict[str, float]  # every metric's mean over the representative variant's seeds
    variants: dict[str, float]  # each variant's mean ("" -> value without variants)


def cells(study: Study, records: Sequence[TrialRecord]) -> list[Cell]:
    """The table's cells in trial order (see the module docstring)."""
    groups: dict[tuple[str, ...], dict[str, list[TrialRecord]]] = {}
    for record in records:
        groups.setdefault(record.trial.cell, {}).setdefault(record.trial.variant, []).append(record)
    out = []
    for labels, variants in groups.items():
        scored = {variant: _mean([r.metrics[study.metric] for r in rs if r.counts])
                  for variant, rs in variants.items()}
        best = max(scored, key=lambda v: -math.inf if math.isnan(scored[v]) else scored[v])
        chosen = [r for r in variants[best] if r.counts]
        values = [r.metrics[study.metric] for r in chosen]
        names = sorted({k for r in chosen for k in r.metrics})
        out.append(Cell(labels, best, scored[best], (max(values) - min(values)) if values else 0.0,
                        len(chosen), sum(r.status == "diverged" for rs in variants.values()
                                         for r in rs),
                        {k: _mean([r.metrics[k] for r in chosen if k in r.metrics]) for k in names},
                        scored))
    return out


def best_cell(cell_list: Sequence[Cell]) -> Cell | None:
    scored = [cell for cell in cell_list if not math.isnan(cell.value)]
    return max(scored, key=lambda cell: cell.value) if scored else None


# ----------------------------------------------------------------------------- table
def _percent(value: float | None) -> str:
    return "-" if value is None or not _finite(value) else f"{100 * value:.1f}"


def cell_text(study: Study, cell: Cell) -> str:
    """``81.2``, ``81.2 ±0.4`` (seeds: max - min), ``h 81.2 / z 70.3`` (the head study),
    `` [tau=0.5]`` (the variant chosen), ``diverged``."""
    if math.isnan(cell.value):
        return "diverged" if cell.diverged else "-"
    text = _percent(cell.value)
    if cell.seeds > 1:
        text += f" ±{100 * cell.spread:.1f}"
    if study.probe_z:
        text = f"h {text} / z {_percent(cell.means.get('linear_z_val_top1'))}"
    if cell.variant:
        text += f" [{cell.variant}]"
    if cell.diverged:
        text += f" ({cell.diverged} diverged)"
    return text


def markdown_table(study: Study, plan: StudyPlan, records: Sequence[TrialRecord]) -> str:
    """The cell table (rows x columns, validation top-1 in %) and one row per trial."""
    cell_list = cells(study, records)
    by_labels = {cell.labels: cell for cell in cell_list}
    axes = study.table_axes()
    lines = [f"# Study `{study.name}`: {study.title}", "",
             f"Paper: {study.paper}. {study.question}", "",
             f"Scale `{plan.scale}`, experiment `{plan.experiment}`, {len(records)} trials. "
             f"Cells: `{study.metric}` in % (validation split; mean over seeds, ± max - min)."]
    rows, columns = _row_and_column_labels(study, plan, cell_list)
    if len(axes) == 1 and not study.pairs:
        lines += ["", f"| {axes[0][1]} | {study.metric} |", "|---|---:|"]
        lines += [f"| {label} | {cell_text(study, by_labels[(label,)])} |" for label in rows]
    else:
        lines += ["", f"| {axes[0][1]} \\ {axes[1][1]} | " + " | ".join(columns) + " |",
                  "|---|" + "---:|" * len(columns)]
        for row in rows:
            entries = [cell_text(study, by_labels[(row, column)]) if (row, column) in by_labels
                       else "" for column in columns]
            lines.append(f"| {row} | " + " | ".join(entries) + " |")
    best = best_cell(cell_list)
    if best is not None:
        lines += ["", f"Best cell on validation: **{', '.join(p for p in best.labels if p != MOOT)}"
                      f"{' [' + best.variant + ']' if best.variant else ''}** "
                      f"({_percent(best.value)}%)."]
    lines += ["", f"Paper's finding: {study.finding}", "", f"Here: {study.caveat}", "",
              "## Trials", ""]
    shown = [(key, title) for key, title in TRIAL_COLUMNS
             if any(key in record.metrics for record in records)]
    lines += ["| trial | status | " + " | ".join(title for _, title in shown) + " |",
              "|---|---|" + "---:|" * len(shown)]
    for record in records:
        values = [_percent(record.metrics.get(key)) if key.endswith("_top1")
                  else _number(record.metrics.get(key)) for key, _ in shown]
        lines.append(f"| {record.trial.name} | {record.status} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    if value is None or not _finite(value):
        return "-"
    if abs(value) >= 1e5:  # a loss that ran away without becoming infinite
        return f"{value:.2g}"
    return f"{value:.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:.3f}"


def _row_and_column_labels(study: Study, plan: StudyPlan,
                           cell_list: Sequence[Cell]) -> tuple[list[str], list[str]]:
    """Row and column labels in grid order (a pairs study: its axis's levels for both)."""
    if study.pairs:
        (axis,) = study.axes
        labels = [level.label for level in axis.levels[plan.scale]]
        return labels, labels
    rows = list(dict.fromkeys(cell.labels[0] for cell in cell_list))
    columns = list(dict.fromkeys(cell.labels[1] for cell in cell_list)) if len(study.axes) > 1 else []
    return rows, columns


# ----------------------------------------------------------------------------- plot
def plot_study(study: Study, plan: StudyPlan, records: Sequence[TrialRecord], path: Path) -> Path:
    """The study's figure (``Study.plot``): heat map, (grouped) bars or curves; validation %."""
    from components.evaluation.plots import new_figure, save_figure

    cell_list = cells(study, records)
    by_labels = {cell.labels: cell for cell in cell_list}
    rows, columns = _row_and_column_labels(study, plan, cell_list)
    axes = study.table_axes()
    fig, ax = new_figure(7.0, 5.5)
    if study.plot == "heatmap":
        values = np.full((len(rows), len(columns)), np.nan)
        for i, row in enumerate(rows):
            for j, column in enumerate(columns):
                cell = by_labels.get((row, column))
                if cell is not None:
                    values[i, j] = 100 * cell.value
        image = ax.imshow(values, cmap="viridis")
        fig.colorbar(image, ax=ax, label=f"{study.metric} (%)")
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", color="white", fontsize=8)
        ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xlabel(axes[1][1])
        ax.set_ylabel(axes[0][1])
    elif study.plot == "bars":
        groups = columns or [""]
        width = 0.8 / len(groups)
        for k, column in enumerate(groups):
            chosen = [by_labels.get((row, column) if column else (row,)) for row in rows]
            heights = [100 * c.value if c is not None else np.nan for c in chosen]
            errors = [50 * c.spread if c is not None else 0.0 for c in chosen]
            x = np.arange(len(rows)) + (k - (len(groups) - 1) / 2) * width
            ax.bar(x, heights, width, yerr=errors if any(errors) else None, capsize=3,
                   label=column or None)
        ax.set_xticks(range(len(rows)), rows, rotation=30, ha="right")
        ax.set_xlabel(axes[0][1])
        ax.set_ylabel(f"{study.metric} (%)")
        if columns:
            ax.legend(title=axes[1][1])
        finite = [100 * c.value for c in cell_list if _finite(c.value)]
        if finite:
            ax.set_ylim(max(0.0, min(finite) - 5), min(100.0, max(finite) + 3))
    else:  # curves: x = the second axis's numeric levels, one line per first-axis level
        x_axis = study.axes[1]
        x_values = {level.label: level.value for level in x_axis.levels[plan.scale]}
        supervised = {level.label for level in study.axes[0].levels[plan.scale]
                      if is_supervised(level)}
        for row in rows:
            line = "--" if row in supervised else "-"  # the supervised reference: dashed
            for metric, style in ((study.metric, line),
                                  *((("linear_z_val_top1", "--"),) if study.probe_z else ())):
                points = [(x_values[c], 100 * by_labels[(row, c)].means.get(metric, np.nan))
                          for c in columns if (row, c) in by_labels and c in x_values]
                suffix = " (z)" if metric != study.metric else (" (h)" if study.probe_z else "")
                if (row, MOOT) in by_labels:  # the axis does not apply: a level line
                    value = 100 * by_labels[(row, MOOT)].means.get(metric, np.nan)
                    ax.axhline(value, linestyle=":" if style == "--" else "-.",
                               color="grey", label=f"{row}{suffix}")
                elif points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, style, marker="o", label=f"{row}{suffix}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(x_axis.title)
        ax.set_ylabel(f"{study.metric} (%)")
        ax.legend(fontsize=8)
    ax.set_title(f"{study.title}\n({study.paper}; {plan.scale} scale, validation)", fontsize=10)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- files
def results_payload(study: Study, plan: StudyPlan, records: Sequence[TrialRecord],
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything ``results.json`` holds (plain data; non-finite numbers as null)."""
    cell_list = cells(study, records)
    best = best_cell(cell_list)
    finished = [r for r in records if r.status in ("finished", "diverged")]
    cpu = [r.metrics.get("pretrain_cpu_s", 0.0) + r.metrics.get("evaluate_s", 0.0)
           for r in finished]
    payload = {
        "study": study.name, "title": study.title, "paper": study.paper,
        "question": study.question, "paper_finding": study.finding, "caveat": study.caveat,
        "scale": plan.scale, "experiment": plan.experiment, "metric": study.metric,
        "split": "validation (data/subsets/val.txt)",
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        "axes": [{"name": name, "title": title} for name, title in study.table_axes()],
        "cells": [{"cell": list(c.labels), "variant": c.variant, "value": c.value,
                   "spread": c.spread, "seeds": c.seeds, "diverged": c.diverged,
                   "means": c.means, "variants": c.variants} for c in cell_list],
        "best": None if best is None else {"cell": list(best.labels), "variant": best.variant,
                                           "value": best.value},
        "trials": [{"name": r.trial.name, "cell": list(r.trial.cell), "variant": r.trial.variant,
                    "seed": r.trial.seed, "status": r.status, "error": r.error,
                    "overrides": r.trial.overrides, "metrics": r.metrics, "history": r.history}
                   for r in records],
        "cost": {"trials": len(records), "trials_with_result": len(finished),
                 "trial_cpu_s_mean": statistics.fmean(cpu) if cpu else None,
                 "trial_cpu_s_total": sum(cpu)},
        "base_config": plan.base.model_dump(mode="json"),
        **(extra or {}),
    }
    return _json_safe(payload)


def write_report(study: Study, plan: StudyPlan, records: Sequence[TrialRecord], folder: Path,
                 extra: dict[str, Any] | None = None) -> list[Path]:
    """``results.json``, ``results.md`` and the plot into ``folder``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / RESULTS_MD
    tmp = folder / f".{RESULTS_MD}.tmp"
    tmp.write_text(markdown_table(study, plan, records))
    tmp.replace(table)
    return [write_json(folder / RESULTS_JSON, results_payload(study, plan, records, extra)), table,
            plot_study(study, plan, records, folder / f"{study.name}.png")]


def _mean(values: Sequence[float]) -> float:
    finite = [float(v) for v in values if _finite(v)]
    return statistics.fmean(finite) if finite else math.nan


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


__all__ = ["RESULTS_JSON", "RESULTS_MD", "Cell", "TrialRecord", "best_cell", "cells",
           "markdown_table", "plot_study", "results_payload", "write_report"]
