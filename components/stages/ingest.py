"""Stage ``ingest``: the configured source and every transfer source -> canonical data sets.

All sources are read before any data set is replaced, so a bad input anywhere leaves every
previous data set as it was.
"""

from __future__ import annotations

import logging

from components.config import PipelineConfig
from components.data.sources import ingest_sources
from components.data.store import MANIFEST, remove_others
from components.errors import ConfigError
from components.stages.common import StagePaths, StageResult

log = logging.getLogger(__name__)


def run(cfg: PipelineConfig) -> StageResult:
    paths = StagePaths.of(cfg)
    names = [source.name for source in cfg.data.transfer]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"data.transfer: duplicate source names {duplicates}")
    jobs = [(cfg.data.source, paths.dataset(cfg.data.source))]
    jobs += [(source, paths.transfer_dataset(source)) for source in cfg.data.transfer]
    datasets = ingest_sources(jobs, cfg.data.shard_size, cfg.data.split_seed)
    (paths.data / "transfer").mkdir(parents=True, exist_ok=True)  # a DVC out even with no transfer sets
    for folder in (paths.data / "datasets", paths.data / "transfer"):  # persisted DVC outs
        remove_others(folder, {target.name for _, target in jobs if target.parent == folder})
    result = StageResult()
    for dataset in datasets:
        prefix = f"data.{dataset.name}"
        for split in dataset.split_names:
            result.metrics[f"{prefix}.{split}_count"] = float(dataset.manifest["splits"][split]["count"])
        result.metrics[f"{prefix}.num_classes"] = float(len(dataset.classes))
        result.tags[f"{prefix}.hash"] = dataset.content_hash
        result.artifacts.append(dataset.root / MANIFEST)
        log.info("%s -> %s (hash %s)", dataset.name, dataset.root, dataset.content_hash[:12])
    return result
