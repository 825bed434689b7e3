"""What every stage shares: where its files live and what it returns.

A stage is a plain function ``run(cfg) -> StageResult``. The CLI (``simclr <stage>``, used by
``dvc repro``) and the Prefect flow both call it; tracking wraps it from the outside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.config import PipelineConfig, SourceConfig


@dataclass
class StageResult:
    """Metrics (flat name -> number), files worth keeping, lineage tags and a step history."""

    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # [{"step": i, "loss": ...}, ...]


@dataclass(frozen=True)
class StagePaths:
    """Every file location derived from ``cfg.paths``; DVC outs in dvc.yaml match these."""

    data: Path
    outputs: Path

    @classmethod
    def of(cls, cfg: PipelineConfig) -> StagePaths:
        return cls(Path(cfg.paths.data), Path(cfg.paths.outputs))

    def dataset(self, source: SourceConfig) -> Path:
        return self.data / "datasets" / source.name

    def transfer_dataset(self, source: SourceConfig) -> Path:
        return self.data / "transfer" / source.name

    @property
    def subsets(self) -> Path:
        return self.data / "subsets"

    def subset_file(self, fraction: float) -> Path:
        return self.subsets / f"{subset_tag(fraction)}.txt"

    def stage_dir(self, stage: str) -> Path:
        return self.outputs / stage


def subset_tag(fraction: float) -> str:
    """0.01 -> '1pct', 0.1 -> '10pct', 0.005 -> '0.5pct'."""
    percent = fraction * 100
    text = f"{percent:g}"
    return f"{text}pct"
