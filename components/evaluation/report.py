"""The results table: every SimCLR number next to its baseline.

``results_rows`` pairs each SimCLR metric (fractions in [0, 1]) with its baselines by name:

=====================================  ==============================  ==================================
SimCLR metric                          first (gain) baseline            further baselines
=====================================  ==============================  ==================================
linear_top1 / linear_top5              random_linear_top1 / _top5       pixels_linear_top1 / _top5
knn_top1                               random_knn_top1                  -
finetune_<tag>_top1 / _top5            supervised_<tag>_top1 / _top5    -
transfer_<name>_top1 / _top5           random_transfer_<name>_top1/_5   -
transfer_<name>_finetune_top1          supervised_transfer_<name>_top1  -
=====================================  ==============================  ==================================

Each top-1 row also shows the validation value of both sides (``<name>_val_top1``: what chose
the L2 / recipe), and a trained row its training budget (``epochs_<name>`` / ``steps_<name>``
of the fine-tuning run or of the supervised baseline, plus the baseline's chosen lr/augment).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    protocol: str  # the paper's protocol name
    metric: str  # SimCLR metric name
    value: float | None
    baseline: str | None  # baseline metric name
    baseline_value: float | None

    @property
    def gain(self) -> float | None:
        if self.value is None or self.baseline_value is None:
            return None
        return self.value - self.baseline_value


def _pairs(metrics: dict[str, float]) -> list[tuple[str, str, list[str]]]:
    """(protocol, simclr metric, [baseline metrics]) for every SimCLR metric present."""
    pairs: list[tuple[str, str, list[str]]] = []
    for k in ("top1", "top5"):
        pairs.append((f"Linear evaluation (frozen h, L2 logistic regression), {k}", f"linear_{k}",
                      [f"random_linear_{k}", f"pixels_linear_{k}"]))
    pairs.append(("kNN (weighted cosine, InstDisc), top1", "knn_top1", ["random_knn_top1"]))
    tags = sorted({m.group(1) for key in metrics
                   if (m := re.fullmatch(r"finetune_(.+)_top1", key)) and not m.group(1).endswith("_val")},
                  key=lambda tag: float(tag.removesuffix("pct")) if tag.endswith("pct") else math.inf)
    for tag in tags:
        for k in ("top1", "top5"):
            pairs.append((f"Semi-supervised fine-tuning, {tag} labels, {k}", f"finetune_{tag}_{k}",
                          [f"supervised_{tag}_{k}"]))
    names = sorted({m.group(1) for key in metrics
                    if (m := re.fullmatch(r"transfer_(.+)_top1", key))
                    and not m.group(1).endswith(("_finetune", "_val", "_finetune_val"))})
    for name in names:
        for k in ("top1", "top5"):
            pairs.append((f"Transfer, linear evaluation on {name}, {k}", f"transfer_{name}_{k}",
                          [f"random_transfer_{name}_{k}"]))
        pairs.append((f"Transfer, fine-tuning on {name}, top1", f"transfer_{name}_finetune_top1",
                      [f"supervised_transfer_{name}_top1"]))
    return pairs


def results_rows(metrics: dict[str, float]) -> list[Row]:
    """One row per (SimCLR metric, baseline) present in the merged ``metrics``."""
    rows = []
    for protocol, metric, baselines in _pairs(metrics):
        value = metrics.get(metric)
        present = [b for b in baselines if b in metrics]
        if value is None and not present:
            continue
        for baseline in present or [None]:
            rows.append(Row(protocol, metric, value, baseline,
                            metrics.get(baseline) if baseline else None))
    return rows


def gains(metrics: dict[str, float]) -> dict[str, float]:
    """``gain_<metric>``: SimCLR minus its first baseline (fraction), for each pair present."""
    out = {}
    for _, metric, baselines in _pairs(metrics):
        if metric in metrics and baselines[0] in metrics:
            out[f"gain_{metric}"] = metrics[metric] - metrics[baselines[0]]
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def val_name(metric: str) -> str | None:
    """The validation counterpart of a test top-1 metric: 'linear_top1' -> 'linear_val_top1'."""
    return metric.removesuffix("_top1") + "_val_top1" if metric.endswith("_top1") else None


def _val(metrics: dict[str, float], metric: str | None) -> str:
    name = val_name(metric) if metric else None
    return _pct(metrics.get(name)) if name else "-"


def budget(metrics: dict[str, float], metric: str | None) -> str:
    """'6 ep / 30 steps' (+ ', lr 0.05, aug' for a baseline with a chosen recipe) or '-'."""
    m = re.fullmatch(r"(finetune|supervised)_(.+)_top[15]", metric or "")
    if not m:
        return "-"
    run = f"{m.group(1)}_{m.group(2)}"
    if f"epochs_{run}" not in metrics:
        return "-"
    text = f"{metrics[f'epochs_{run}']:.0f} ep / {metrics.get(f'steps_{run}', 0):.0f} steps"
    if f"lr_{run}" in metrics:
        text += f", lr {metrics[f'lr_{run}']:g}, aug {'on' if metrics.get(f'augment_{run}') else 'off'}"
    return text


def headline_markdown(metrics: dict[str, float]) -> str:
    """The results table's headline in four columns (fits a terminal and Prefect's artifact page):
    protocol, SimCLR test (val), first baseline test, gain in points. ``results_markdown`` has
    every column."""
    lines = ["| Protocol | SimCLR test (val) | Baseline test | Gain |", "|---|---:|---|---:|"]
    for row in results_rows(metrics):
        gain = row.gain
        val = _val(metrics, row.metric)
        lines.append(f"| {row.protocol} | {_pct(row.value)}{'' if val == '-' else f' ({val})'} | "
                     f"{row.baseline or '-'} {_pct(row.baseline_value)} | "
                     f"{'-' if gain is None else f'{100 * gain:+.2f}'} |")
    return "\n".join(lines)


def results_markdown(metrics: dict[str, float], extra: dict[str, dict[str, float]] | None = None) -> str:
    """The results table (percent, gains in points) plus reference tables of other metrics."""
    lines = ["# Results", "",
             "Accuracies in %; SimCLR / Baseline = test split (top-1 unless noted), scored once "
             "from the final model; val = the validation split (`data/subsets/val.txt`), which "
             "made every choice (L2, recipe, gate). Gain = SimCLR - baseline in test points. "
             "Baselines: `random_*` = same encoder architecture, random init; `pixels_*` = raw "
             "pixels; `supervised_*` = same architecture trained from random init on the same "
             "labels, recipe chosen on val. Budget: epochs / optimizer steps.", "",
             "| Protocol (paper) | SimCLR metric | SimCLR | SimCLR val | Budget | Baseline | "
             "Baseline value | Baseline val | Baseline budget | Gain (points) |",
             "|---|---|---:|---:|---|---|---:|---:|---|---:|"]
    for row in results_rows(metrics):
        gain = row.gain
        lines.append(f"| {row.protocol} | `{row.metric}` | {_pct(row.value)} | "
                     f"{_val(metrics, row.metric)} | {budget(metrics, row.metric)} | "
                     f"`{row.baseline or '-'}` | {_pct(row.baseline_value)} | "
                     f"{_val(metrics, row.baseline)} | {budget(metrics, row.baseline)} | "
                     f"{'-' if gain is None else f'{100 * gain:+.2f}'} |")
    if "supervised_100pct_top1" in metrics:
        lines += ["", "Reference, supervised from random init on 100% of the labels (outside "
                  f"val): test top-1 {_pct(metrics['supervised_100pct_top1'])}, top-5 "
                  f"{_pct(metrics.get('supervised_100pct_top5'))}, val top-1 "
                  f"{_val(metrics, 'supervised_100pct_top1')}, budget "
                  f"{budget(metrics, 'supervised_100pct_top1')}"]
    for title, values in (extra or {}).items():
        if values:
            lines += ["", f"## {title}", "", "| metric | value |", "|---|---:|"]
            lines += [f"| `{k}` | {v:.6g} |" for k, v in sorted(values.items())]
    return "\n".join(lines) + "\n"
