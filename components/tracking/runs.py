"""Placeholder until MLflow tracking lands: runs the stage untracked."""

from components.config import PipelineConfig
from components.stages.catalog import StageFn
from components.stages.common import StageResult


def tracked_stage(cfg: PipelineConfig, name: str, fn: StageFn) -> StageResult:
    return fn(cfg)
