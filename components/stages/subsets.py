"""Stage ``subsets``: the validation split and the class-balanced, seeded label subsets of the
training split.

Writes ``data/subsets/val.txt``, ``data/subsets/<tag>.txt`` and ``manifest.json`` (rules in
:mod:`components.data.subsets`); ``outputs/subsets/metrics.json`` records each one's image
count, ``outputs/subsets/hashes.json`` the data set's content hash and each index digest.
"""

from __future__ import annotations

from components.config import PipelineConfig
from components.data.store import CanonicalDataset
from components.data.subsets import MANIFEST, read_subset, write_subsets
from components.io import indices_sha256, write_json
from components.stage_api import StageContext, StagePaths, StageResult


def run(cfg: PipelineConfig, ctx: StageContext) -> StageResult:
    paths = StagePaths.of(cfg)
    dataset = CanonicalDataset(paths.dataset(cfg.data.source))
    manifest = write_subsets(paths.subsets, dataset, cfg.subsets.fractions, cfg.subsets.seed,
                             cfg.subsets.val_fraction)
    result = StageResult(tags={"data.subsets.content_hash": dataset.content_hash,
                               "data.subsets.seed": str(cfg.subsets.seed)})
    hashes = {"dataset_content_hash": dataset.content_hash}
    train_size = len(dataset.split("train"))
    entries = {"val": manifest["validation"], **manifest["subsets"]}
    for tag, entry in entries.items():
        result.metrics[f"subsets.{tag}.count"] = float(entry["count"])
        result.artifacts.append(paths.subsets / entry["file"])
        hashes[f"{tag}.indices_sha256"] = indices_sha256(
            read_subset(paths.subsets / entry["file"], train_size))
        result.tags[f"data.subsets.{tag}.indices_sha256"] = hashes[f"{tag}.indices_sha256"]
    result.artifacts += [paths.subsets / MANIFEST, write_json(ctx.out / "hashes.json", hashes)]
    return result
