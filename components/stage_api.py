"""The stage contract, below everything that uses it: the stage list, paths, results.

A stage is a module under ``components/stages`` with ``run(cfg, ctx) -> StageResult``; the
runner (:mod:`components.stages.runner`) owns the fresh ``outputs/<stage>`` folder
(``ctx.out``), the timing, ``metrics.json`` (written last) and the stage's MLflow run
(``ctx.run_id``). :data:`STAGES` is the one pipeline definition: ``dvc.yaml``, the CLI, the flow,
the report and the help all follow it (``tests/test_pipeline_contract.py`` checks ``dvc.yaml``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.config import PipelineConfig, SourceConfig
from components.data.subsets import subset_tag
from components.errors import PipelineError
from components.io import write_json

METRICS_FILE = "metrics.json"
ENCODER_FILE = "encoder.pt"
RESULTS_FILE = "results.md"
FINGERPRINT_FILE = "fingerprint.json"  # outputs/fingerprint/fingerprint.json: ingest's source dep
TIMINGS_FOLDER = "timings"  # <outputs>/timings/<stage>.json: run-varying numbers, not a DVC out
PARENT_RUN_ENV = "SIMCLR_PARENT_RUN_ID"  # the pipeline (parent) MLflow run a stage's run nests under


@dataclass(frozen=True)
class Stage:
    name: str  # the `simclr <name>` command and the dvc.yaml stage
    module: str  # the module under components.stages holding ``run``
    help: str
    tracked: bool = True  # False: no MLflow run (a check that runs on every pipeline run)


STAGES: tuple[Stage, ...] = (
    Stage("fingerprint", "fingerprint", "list the sources (sizes, mtimes, ETags): ingest reruns when they change",
          tracked=False),
    Stage("ingest", "ingest", "turn the configured source (and transfer sources) into canonical data sets"),
    Stage("subsets", "subsets", "write the class-balanced, seeded label subsets of the training split"),
    Stage("pretrain", "pretrain", "SimCLR pretraining on Ray Train workers -> outputs/pretrain/encoder.pt"),
    Stage("linear-eval", "linear_eval", "linear probe and kNN on the frozen pretrained encoder"),
    Stage("finetune", "finetune", "fine-tune the pretrained encoder on the label subsets"),
    Stage("transfer", "transfer", "linear probe of the pretrained encoder on the transfer data sets"),
    Stage("baselines", "baselines", "random-init, raw-pixel and supervised baselines on the same splits"),
    Stage("report", "report", "the results table: every SimCLR number next to its baseline"),
    Stage("register", "register", "register the encoder in MLflow and apply the promotion gate"),
)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
EVALUATION_STAGES: tuple[str, ...] = ("linear-eval", "finetune", "transfer", "baselines")


def stage_named(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")


@dataclass
class StageResult:
    """What a stage hands the runner.

    ``metrics`` (flat name -> number) go to ``metrics.json`` (a DVC out) and MLflow; they must be
    a function of the stage's inputs. ``timings`` (seconds, throughput: numbers that vary between
    identical runs) go only to MLflow and to the untracked ``<outputs>/timings/<stage>.json``.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # [{"step": i, "loss": ...}, ...]


@dataclass(frozen=True)
class StageContext:
    """What the runner hands a stage: its fresh output folder and its MLflow run (if tracked)."""

    out: Path
    run_id: str | None = None
    tracker: Any = None  # components.tracking.runs.Tracker; typed loosely: this module sits below it


@dataclass(frozen=True)
class StagePaths:
    """Every file location derived from ``cfg.paths``; dvc.yaml's outs match these (contract test)."""

    data: Path
    outputs: Path

    @classmethod
    def of(cls, cfg: PipelineConfig) -> StagePaths:
        return cls(Path(cfg.paths.data), Path(cfg.paths.outputs))

    @property
    def datasets(self) -> Path:
        return self.data / "datasets"

    @property
    def transfer(self) -> Path:
        return self.data / "transfer"

    def dataset(self, source: SourceConfig) -> Path:
        return self.datasets / source.name

    def transfer_dataset(self, source: SourceConfig) -> Path:
        return self.transfer / source.name

    @property
    def subsets(self) -> Path:
        return self.data / "subsets"

    def subset_file(self, fraction: float) -> Path:
        return self.subsets / f"{subset_tag(fraction)}.txt"

    def stage_dir(self, stage: str) -> Path:
        return self.outputs / stage

    def metrics_file(self, stage: str) -> Path:
        return self.stage_dir(stage) / METRICS_FILE

    def timings_file(self, stage: str) -> Path:
        return self.outputs / TIMINGS_FOLDER / f"{stage}.json"

    @property
    def encoder(self) -> Path:
        """``outputs/pretrain/encoder.pt``: the encoder every evaluation stage evaluates."""
        return self.stage_dir("pretrain") / ENCODER_FILE

    @property
    def fingerprint(self) -> Path:
        return self.stage_dir("fingerprint") / FINGERPRINT_FILE

    @property
    def results(self) -> Path:
        return self.stage_dir("report") / RESULTS_FILE


def write_metrics(path: Path, metrics: dict[str, float]) -> Path:
    """``metrics.json``: flat name -> float (DVC metrics format), written atomically."""
    return write_json(path, {name: float(value) for name, value in metrics.items()})


def read_metrics(path: Path) -> dict[str, float]:
    """A stage's ``metrics.json`` as name -> float ({} when the stage has not run)."""
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PipelineError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(content, dict):
        raise PipelineError(f"{path}: expected a flat mapping of metric names to numbers")
    return {k: float(v) for k, v in content.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def metric_slug(name: str) -> str:
    """A stage or data set name as a metric-name segment: 'fashion-mnist' -> 'fashion_mnist'."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


__all__ = ["EVALUATION_STAGES", "FINGERPRINT_FILE", "PARENT_RUN_ENV", "STAGES", "STAGE_NAMES", "Stage", "StageContext",
           "StagePaths", "StageResult", "metric_slug", "read_metrics", "stage_named", "subset_tag",
           "write_metrics"]
