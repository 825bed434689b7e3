"""Stage ``report``: one results table from every evaluation stage's ``metrics.json``.

Reads ``outputs/{pretrain,linear-eval,finetune,transfer,baselines}/metrics.json`` (those that
exist), writes ``outputs/report/results.md`` (every SimCLR number next to its baseline and the
paper's protocol name) and ``outputs/report/metrics.json`` (``gain_<metric>`` = SimCLR minus
its first baseline), and prints the table.
"""

from __future__ import annotations

import logging

from components.config import PipelineConfig
from components.errors import PipelineError
from components.evaluation.report import gains, read_metrics, results_markdown, write_metrics
from components.evaluation.stage_io import fresh_stage_dir
from components.stages.common import StagePaths, StageResult

log = logging.getLogger(__name__)
STAGE = "report"
EVALUATION_STAGES = ("linear-eval", "finetune", "transfer", "baselines")


def run(cfg: PipelineConfig) -> StageResult:
    paths = StagePaths.of(cfg)
    out = fresh_stage_dir(cfg, STAGE)
    per_stage = {stage: read_metrics(paths.stage_dir(stage) / "metrics.json")
                 for stage in ("pretrain", *EVALUATION_STAGES)}
    if not any(per_stage[stage] for stage in EVALUATION_STAGES):
        raise PipelineError(f"{paths.outputs}: no evaluation metrics.json found under "
                            f"{', '.join(EVALUATION_STAGES)} (run those stages first)")
    merged: dict[str, float] = {}
    for stage in EVALUATION_STAGES:
        merged.update(per_stage[stage])
    extra = {"Pretraining (outputs/pretrain/metrics.json)": per_stage["pretrain"],
             "Run details (chosen L2, image counts, seconds)": {
                 k: v for k, v in merged.items() if k.startswith(("l2_", "images_", "seconds_"))}}
    table = results_markdown(merged, extra)
    results = out / "results.md"
    results.write_text(table)
    print(table)
    metrics = gains(merged)
    write_metrics(out / "metrics.json", metrics)
    return StageResult(metrics=metrics, artifacts=[results, out / "metrics.json"])
