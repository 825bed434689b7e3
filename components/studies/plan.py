"""One study at one configuration: every trial's validated configuration and the experiment.

:meth:`StudyPlan.of` merges each trial's overrides (:mod:`components.studies.grids`) over the
base configuration (``params.yaml`` + preset + ``--set``) and validates it before any work, so
a bad override fails with one line naming the trial and the key. Every trial also gets
:data:`NO_MONITOR`: a trial is scored by its validation probe, so pretraining's kNN monitor
(a forward pass over ``2 x pretrain.knn_images`` images per epoch) would only cost time.

The experiment name ``<study>-<scale>-<key>`` is what a restart finds again: ``key`` digests
every trial's name and the settings that change what it trains or how it is scored (the
training sections, ``evaluate.linear`` and ``evaluate.knn``) with the data set's content hash.
Rerunning the same command resumes the experiment; changing any of those starts a new one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from components.config import PipelineConfig, StudyScale, config_from_dict, deep_merge
from components.errors import ConfigError
from components.studies.grids import SUPERVISED, Study, Trial
from components.training.loop import NOT_TRAINING_KEYS, TRAINING_SECTIONS

NO_MONITOR: dict[str, Any] = {"pretrain.knn_every": 0}
SCORED_SECTIONS = ("evaluate",)
NOT_SCORING_KEYS = ("evaluate.batch_size", "evaluate.device", "evaluate.cache_dir",
                    "evaluate.threads", "evaluate.finetune", "evaluate.supervised",
                    "evaluate.supervised_full_epochs", "evaluate.transfer_finetune",
                    "evaluate.embedding_method", "evaluate.embedding_points")
KEY_LENGTH = 10


def nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "a.c": 2}`` -> ``{"a": {"b": 1, "c": 2}}`` (what ``deep_merge`` takes)."""
    tree: dict[str, Any] = {}
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def trial_config(base: dict[str, Any], overrides: dict[str, Any], name: str = "") -> PipelineConfig:
    """``base`` (a config dump) with a trial's overrides and :data:`NO_MONITOR`,
    validated; a bad value raises :class:`ConfigError` naming the trial."""
    try:
        return config_from_dict(deep_merge(base, nested({**overrides, **NO_MONITOR})))
    except ConfigError as err:
        raise ConfigError(f"trial {name!r}: {err}") from None


def _not_digested(cfg: PipelineConfig) -> tuple[str, ...]:
    """Keys that change neither what a trial trains nor how it is scored (a supervised
    trial trains with the fine-tuning recipe: ``evaluate.finetune`` counts for it)."""
    scoring = NOT_SCORING_KEYS
    if cfg.study.trial_method == SUPERVISED:
        scoring = tuple(key for key in scoring if key != "evaluate.finetune")
    return (*(f"pretrain.{key}" for key in NOT_TRAINING_KEYS), *scoring)


@dataclass(frozen=True)
class PlannedTrial:
    """A trial, what it sets over the base (its overrides and its ``seed``) and the result."""

    trial: Trial
    overrides: dict[str, Any]
    config: PipelineConfig


@dataclass(frozen=True)
class StudyPlan:
    """The trials of ``study`` at ``scale`` over ``base``, and the Tune experiment's name."""

    study: Study
    scale: StudyScale
    base: PipelineConfig
    trials: tuple[PlannedTrial, ...]
    experiment: str

    @classmethod
    def of(cls, study: Study, base: PipelineConfig, content_hash: str) -> StudyPlan:
        scale = base.study.scale
        dumped = base.model_dump(mode="json")
        planned = []
        for trial in study.trials(scale):
            overrides = {**trial.overrides, "seed": base.seed + trial.seed}
            planned.append(PlannedTrial(trial, overrides,
                                        trial_config(dumped, overrides, trial.name)))
        digests = [[item.trial.name, item.config.digest(*TRAINING_SECTIONS, *SCORED_SECTIONS,
                                                        exclude=_not_digested(item.config))]
                   for item in planned]
        blob = json.dumps({"trials": digests, "data": content_hash}, sort_keys=True).encode()
        key = hashlib.sha256(blob).hexdigest()[:KEY_LENGTH]
        return cls(study, scale, base, tuple(planned), f"{study.name}-{scale}-{key}")

    def trial_named(self, name: str) -> PlannedTrial:
        for item in self.trials:
            if item.trial.name == name:
                return item
        raise KeyError(f"study {self.study.name}: no trial {name!r}")

    @property
    def names(self) -> list[str]:
        return [item.trial.name for item in self.trials]


__all__ = ["NO_MONITOR", "PlannedTrial", "StudyPlan", "nested", "trial_config"]
