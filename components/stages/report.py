"""Stage ``report``: one results table from every evaluation stage's ``metrics.json``.

Reads ``outputs/{pretrain,linear-eval,finetune,transfer,baselines}/metrics.json`` (those that
exist), writes ``outputs/report/results.md`` (every SimCLR number next to its baseline and the
paper's protocol name) and ``outputs/report/metrics.json`` (``gain_<metric>`` = SimCLR minus
its first baseline), and prints the table (not under the flow: its closing summary shows the
headline rows). Timings are not in it: they vary between identical runs, so they live in MLflow
and ``outputs/timings/`` only.
"""

from __future__ import annotations

import logging

from components.config import PipelineConfig
from components.errors import PipelineError
from components.evaluation.report import gains, results_markdown
from components.logs import relayed
from components.stage_api import (
    EVALUATION_STAGES,
    StageContext,
    StagePaths,
    StageResult,
    read_metrics,
)

log = logging.getLogger(__name__)


def evaluation_metrics(paths: StagePaths) -> dict[str, float]:
    """The evaluation stages' ``metrics.json`` merged (later stages win a shared name)."""
    merged: dict[str, float] = {}
    for stage in EVALUATION_STAGES:
        merged.update(read_metrics(paths.metrics_file(stage)))
    return merged


def run(cfg: PipelineConfig, ctx: StageContext) -> StageResult:
    paths = StagePaths.of(cfg)
    per_stage = {stage: read_metrics(paths.metrics_file(stage))
                 for stage in ("pretrain", *EVALUATION_STAGES)}
    if not any(per_stage[stage] for stage in EVALUATION_STAGES):
        raise PipelineError(f"{paths.outputs}: no evaluation metrics.json found under "
                            f"{', '.join(EVALUATION_STAGES)} (run those stages first)")
    merged = evaluation_metrics(paths)
    extra = {"Pretraining (outputs/pretrain/metrics.json)": per_stage["pretrain"],
             "Run details (chosen L2, image counts)": {
                 k: v for k, v in merged.items() if k.startswith(("l2_", "images_"))}}
    table = results_markdown(merged, extra)
    results = paths.results
    results.write_text(table)
    if relayed():  # under the flow: its closing summary shows the headline rows
        log.debug("results table written to %s", results)
    else:
        print(table)
    return StageResult(metrics=gains(merged), artifacts=[results])
