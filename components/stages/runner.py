"""The one runner every stage goes through (``simclr <stage>``, ``dvc repro``, the flow, benches).

For stage ``name`` (one of :data:`components.stage_api.STAGES`) it:

1. empties ``outputs/<name>`` and hands it to ``components.stages.<module>.run(cfg, ctx)``,
   with ``cfg.evaluate.threads`` torch threads;
2. records the wall time in ``result.timings`` and writes the timings to the untracked
   ``<outputs>/timings/<name>.json`` (never into a DVC out: identical runs give identical outs);
3. writes ``outputs/<name>/metrics.json`` last, so a stage that fails leaves no metrics behind;
4. when tracked (``track=True`` and the stage's ``Stage.tracked``; the ``fingerprint`` check is
   not), does all of it inside the stage's MLflow run
   (:func:`components.tracking.runs.tracked_stage`), which logs metrics, timings and artifacts.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from components.config import PipelineConfig
from components.io import write_json
from components.stage_api import (
    StageContext,
    StagePaths,
    StageResult,
    metric_slug,
    stage_named,
    write_metrics,
)

log = logging.getLogger(__name__)
StageFn = Callable[[PipelineConfig, StageContext], StageResult]


def stage_body(name: str) -> StageFn:
    """``components.stages.<module>.run`` of the stage called ``name`` (imported lazily)."""
    return importlib.import_module(f"components.stages.{stage_named(name).module}").run


def run_stage(cfg: PipelineConfig, name: str, *, track: bool = True, tracker=None,
              parent_run_id: str | None = None) -> StageResult:
    """Run stage ``name`` under the runner (see module); ``track=False`` skips MLflow."""
    body = stage_body(name)
    paths = StagePaths.of(cfg)

    def execute(run_id: str | None, tracker=None) -> StageResult:
        started = time.perf_counter()
        out = fresh_dir(paths.stage_dir(name))
        with torch_threads(cfg.evaluate.threads):
            result = body(cfg, StageContext(out, run_id, tracker))
        seconds = time.perf_counter() - started
        result.timings[f"seconds_{metric_slug(name)}"] = seconds
        write_json(paths.timings_file(name), result.timings)
        result.artifacts.append(write_metrics(paths.metrics_file(name), result.metrics))
        log.info("%s: done in %.1f s", name, seconds)
        return result

    if not track or not stage_named(name).tracked:
        return execute(None)
    from components.tracking.runs import Tracker, tracked_stage

    tracker = tracker or Tracker.from_config(cfg)
    return tracked_stage(cfg, name, lambda run_id: execute(run_id, tracker), parent_run_id, tracker)


def stage_function(name: str) -> Callable[[PipelineConfig], StageResult]:
    """``cfg -> StageResult``: stage ``name`` under the runner without MLflow (tests, benches)."""
    stage_named(name)  # unknown names fail here, not at the call
    return lambda cfg: run_stage(cfg, name, track=False)


def fresh_dir(folder: Path) -> Path:
    """``folder`` emptied (nothing stale of an earlier run survives: it is the stage's DVC out)."""
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (None: unchanged), then restore.

    On an oversubscribed machine (load above the core count) one thread per process can be
    5-30x faster than two: threads spin-wait on each other while descheduled.
    """
    if not threads:  # nothing to set: stages that never touch torch do not pay its import
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
