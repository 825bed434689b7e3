"""Data for the study tests: the tiny preset's digits, ingested and split as the stages do."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from components.config import PipelineConfig, load_config

ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class DigitsData:
    root: Path  # the folder the config's relative paths are relative to
    cfg: PipelineConfig  # params.yaml + tiny preset, data and outputs under ``root``
    dataset: Path
    subsets: Path


def tiny_study_config(root: Path, *overrides: str) -> PipelineConfig:
    """params.yaml + the tiny preset, smoke-scale studies (2 x 2), every path under ``root``."""
    return load_config(ROOT / "params.yaml", "tiny", [
        "study.scale=smoke", f"paths.data={root / 'data'}", f"paths.outputs={root / 'outputs'}", "data.transfer=[]",
        f"ray.storage_path={root / 'checkpoints'}", f"study.results_dir={root / 'studies'}",
        f"evaluate.cache_dir={root / 'cache'}", *overrides])


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory: pytest.TempPathFactory) -> DigitsData:
    """``ingest`` and ``subsets`` of the tiny preset (sklearn's digits) run once per session."""
    from components.stage_api import StagePaths
    from components.stages.runner import stage_function

    root = tmp_path_factory.mktemp("study-digits")
    cfg = tiny_study_config(root)
    stage_function("ingest")(cfg)
    stage_function("subsets")(cfg)
    paths = StagePaths.of(cfg)
    return DigitsData(root, cfg, paths.dataset(cfg.data.source), paths.subsets)
