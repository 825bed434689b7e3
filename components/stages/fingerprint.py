"""Stage ``fingerprint``: a cheap listing digest of every source -> ``outputs/fingerprint``.

DVC runs it every time (``always_changed`` in dvc.yaml); ``ingest`` depends on its
``fingerprint.json``, so unchanged sources leave the file byte for byte the same and DVC skips
``ingest`` and everything after it, while an added or changed file makes them all stale
(:mod:`components.data.fingerprint`). It is not tracked in MLflow: a scheduled run that finds
nothing new leaves no run behind.
"""

from __future__ import annotations

import logging

from components.config import PipelineConfig
from components.data.fingerprint import sources_fingerprint
from components.io import write_json
from components.stage_api import FINGERPRINT_FILE, StageContext, StageResult, metric_slug

log = logging.getLogger(__name__)


def run(cfg: PipelineConfig, ctx: StageContext) -> StageResult:
    prints = sources_fingerprint([cfg.data.source, *cfg.data.transfer])
    write_json(ctx.out / FINGERPRINT_FILE, prints)
    result = StageResult()
    for name, record in prints.items():
        if "error" in record:
            log.warning("source %s: %s (ingest will fail on it)", name, record["error"])
        elif "files" in record:
            result.metrics[f"source.{metric_slug(name)}.files"] = float(record["files"])
            log.info("source %s: %d files, %.1f MB, digest %s", name, record["files"],
                     record["bytes"] / 1e6, record["digest"][:12])
        else:
            log.info("source %s: bundled (%s)", name, record)
    return result
