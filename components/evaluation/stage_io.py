"""Shared plumbing of the evaluation stages: the stage wrapper, encoder path, metric names."""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from components.config import PipelineConfig
from components.evaluation.report import write_metrics
from components.stages.common import StagePaths, StageResult

log = logging.getLogger(__name__)
ENCODER_FILE = "encoder.pt"
StageBody = Callable[[PipelineConfig, Path], StageResult]


def evaluation_stage(stage: str) -> Callable[[StageBody], Callable[[PipelineConfig], StageResult]]:
    """Turn ``body(cfg, out) -> StageResult`` into the stage function ``run(cfg)``.

    The wrapper owns what every evaluation stage shares: ``cfg.evaluate.threads`` torch
    threads, a fresh ``outputs/<stage>`` folder handed to the body as ``out``, the stage's wall
    time as metric ``seconds_<stage>``, and ``metrics.json`` written last, so a stage that
    fails leaves no metrics behind.
    """

    def wrap(body: StageBody) -> Callable[[PipelineConfig], StageResult]:
        @functools.wraps(body)
        def run(cfg: PipelineConfig) -> StageResult:
            started = time.perf_counter()
            with torch_threads(cfg.evaluate.threads):
                out = fresh_stage_dir(cfg, stage)
                result = body(cfg, out)
            seconds = time.perf_counter() - started
            result.metrics[f"seconds_{metric_slug(stage)}"] = seconds
            result.artifacts.append(write_metrics(out / "metrics.json", result.metrics))
            log.info("%s: done in %.1f s", stage, seconds)
            return result

        return run

    return wrap


def pretrained_encoder_path(cfg: PipelineConfig) -> Path:
    """``outputs/pretrain/encoder.pt``: the encoder every evaluation stage evaluates."""
    return StagePaths.of(cfg).stage_dir("pretrain") / ENCODER_FILE


def fresh_stage_dir(cfg: PipelineConfig, stage: str) -> Path:
    """The stage's output folder with any stale ``metrics.json`` removed (a failed run leaves none)."""
    out = StagePaths.of(cfg).stage_dir(stage)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)
    return out


def metric_slug(name: str) -> str:
    """A data set name as a metric-name segment: 'fashion-mnist' -> 'fashion_mnist'."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


def indices_digest(indices: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest()


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (None: unchanged), then restore.

    On an oversubscribed machine (load above the core count) one thread per process can be
    5-30x faster than two: threads spin-wait on each other while descheduled.
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
