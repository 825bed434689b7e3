"""Which numbers are what: the encoder's collected metrics, the headline ones, the counters.

One collector (:func:`collect_metrics`) reads every evaluation stage's ``metrics.json`` for the
register stage (the candidate's metrics, logged on its logged model) and for the pipeline's
parent run (:func:`headline_metrics`: the numbers worth comparing across runs).

Counters (:func:`is_counter`: epochs, steps, workers, image counts, the epoch a run resumed
from) are integers that describe a run rather than measure it: they are logged as MLflow params,
never as metrics, and are not part of a model's metrics.
"""

from __future__ import annotations

from components.stage_api import EVALUATION_STAGES, StagePaths, read_metrics

CANDIDATE_STAGES = (*EVALUATION_STAGES, "report", "pretrain")  # the encoder's; evaluations first
# The one list of counters: exact names, and prefixes of per-subset counters (images_linear, ...)
COUNTERS = ("epochs", "steps", "num_workers", "resumed_from")
COUNTER_PREFIXES = ("images_", "epochs_", "steps_")
# Headline numbers besides every top-1 (``*_top1``: linear, kNN, fine-tune, baselines, transfer)
HEADLINE_EXTRA = ("linear_top5", "final_loss", "registered_version", "promoted")


def is_counter(name: str) -> bool:
    """True for a count that describes a run (logged as a param), not a measurement."""
    leaf = name.rsplit(".", 1)[-1]
    return leaf in COUNTERS or leaf.startswith(COUNTER_PREFIXES)


def collect_metrics(paths: StagePaths, stages: tuple[str, ...] = CANDIDATE_STAGES
                    ) -> dict[str, float]:
    """Every number in the ``metrics.json`` of ``stages``; a name seen twice keeps the first
    (in stage order) and the later one is kept as ``<stage>.<name>``."""
    merged: dict[str, float] = {}
    for stage in stages:
        for key, value in read_metrics(paths.metrics_file(stage)).items():
            merged[key if key not in merged else f"{stage}.{key}"] = value
    return merged


def model_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics logged on a registered encoder's logged model: everything but counters."""
    return {k: v for k, v in metrics.items() if not is_counter(k)}


def headline_metrics(paths: StagePaths) -> dict[str, float]:
    """The pipeline run's comparable numbers: every top-1 (and linear top-5, final loss) of the
    encoder's stages, plus the register stage's ``registered_version`` and ``promoted``."""
    merged = collect_metrics(paths, (*CANDIDATE_STAGES, "register"))
    return {k: v for k, v in merged.items()
            if "." not in k and (k.endswith("_top1") or k in HEADLINE_EXTRA)}


__all__ = ["CANDIDATE_STAGES", "collect_metrics", "headline_metrics", "is_counter",
           "model_metrics"]
