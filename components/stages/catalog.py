"""The pipeline's stages in order, each named by ``module:function`` (imported lazily)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from components.config import PipelineConfig
from components.stages.common import StageResult

StageFn = Callable[[PipelineConfig], StageResult]

STAGES: dict[str, str] = {
    "ingest": "components.stages.ingest:run",
    "subsets": "components.stages.subsets:run",
    "pretrain": "components.stages.pretrain:run",
    "linear-eval": "components.stages.linear_eval:run",
    "finetune": "components.stages.finetune:run",
    "transfer": "components.stages.transfer:run",
    "baselines": "components.stages.baselines:run",
    "report": "components.stages.report:run",
    "register": "components.stages.register:run",  # keep last: reads every outputs/*/metrics.json
}


def stage_function(name: str) -> StageFn:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    module, function = STAGES[name].split(":")
    return getattr(importlib.import_module(module), function)
