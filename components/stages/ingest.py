"""Stage ``ingest``: the configured source and every transfer source -> canonical data sets.

All sources are read before any data set is replaced, so a bad input anywhere leaves every
previous data set as it was. ``outputs/ingest/metrics.json`` records the image count of every
split and the class count of every data set; the content hashes are tags of the MLflow run and
``outputs/ingest/hashes.json`` (``{name: content_hash}``).
"""

from __future__ import annotations

import logging

from components.config import PipelineConfig
from components.data.sources import ingest_sources
from components.data.store import MANIFEST, remove_others
from components.io import write_json
from components.stage_api import StageContext, StagePaths, StageResult

log = logging.getLogger(__name__)


def run(cfg: PipelineConfig, ctx: StageContext) -> StageResult:
    paths = StagePaths.of(cfg)
    jobs = [(cfg.data.source, paths.dataset(cfg.data.source))]
    jobs += [(source, paths.transfer_dataset(source)) for source in cfg.data.transfer]
    datasets = ingest_sources(jobs, cfg.data.shard_size, cfg.data.split_seed)
    paths.transfer.mkdir(parents=True, exist_ok=True)  # a DVC out even with no transfer sets
    for folder in (paths.datasets, paths.transfer):  # persisted DVC outs
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
    result.artifacts.append(write_json(ctx.out / "hashes.json",
                                       {d.name: d.content_hash for d in datasets}))
    return result
