"""Stage ``subsets``: class-balanced, seeded label subsets of the training split.

Writes ``data/subsets/<tag>.txt`` and ``manifest.json`` (rule in :mod:`components.data.subsets`).
"""

from __future__ import annotations

from components.config import PipelineConfig
from components.data.store import CanonicalDataset
from components.data.subsets import MANIFEST, write_subsets
from components.stages.common import StagePaths, StageResult


def run(cfg: PipelineConfig) -> StageResult:
    paths = StagePaths.of(cfg)
    dataset = CanonicalDataset(paths.dataset(cfg.data.source))
    manifest = write_subsets(paths.subsets, dataset, cfg.subsets.fractions, cfg.subsets.seed)
    result = StageResult(tags={"data.subsets.content_hash": dataset.content_hash,
                               "data.subsets.seed": str(cfg.subsets.seed)})
    for tag, entry in manifest["subsets"].items():
        result.metrics[f"subsets.{tag}.count"] = float(entry["count"])
        result.artifacts.append(paths.subsets / entry["file"])
    result.artifacts.append(paths.subsets / MANIFEST)
    return result
