"""A study's plan: every trial's validated configuration and the experiment a restart finds."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.config import load_config
from components.errors import ConfigError
from components.studies.grids import study_named
from components.studies.plan import StudyPlan, nested

ROOT = Path(__file__).resolve().parents[3]


def test_nested_overrides() -> None:
    assert nested({"a.b": 1, "a.c.d": [2], "e": None}) == {"a": {"b": 1, "c": {"d": [2]}}, "e": None}


def test_seeds_are_offsets_from_the_base_seed() -> None:
    cfg = load_config(ROOT / "params.yaml", "study", ["seed=7"])
    plan = StudyPlan.of(study_named("temperature"), cfg, "")
    assert sorted({item.config.seed for item in plan.trials}) == [7, 8]
    assert all(item.overrides["seed"] == 7 + item.trial.seed for item in plan.trials)


def test_a_bad_trial_value_names_the_trial_and_the_key() -> None:
    cfg = load_config(ROOT / "params.yaml", "study", ["pretrain.max_images=300"])
    with pytest.raises(ConfigError, match=r"trial 'batch 512, epochs 2': .*pretrain\.max_images: "
                                          r"300 is smaller than pretrain\.batch_size=512"):
        StudyPlan.of(study_named("batch-epochs"), cfg, "")


def test_the_experiment_follows_what_trials_train_and_score_on_which_data() -> None:
    """Same command, same experiment (what a restart finds); a change of training, scoring or
    data is another experiment; Ray, tracking and concurrency settings are not."""
    study = study_named("temperature")
    base = load_config(ROOT / "params.yaml", "study")
    name = StudyPlan.of(study, base, "a" * 64).experiment
    assert name.startswith("temperature-small-")
    assert StudyPlan.of(study, load_config(ROOT / "params.yaml", "study"), "a" * 64).experiment == name
    same = ["ray.address=ray://head:10001", "tracking.experiment=other",
            "study.max_concurrent_trials=1", "pretrain.checkpoint_every=2", "evaluate.threads=1"]
    for override in same:
        cfg = load_config(ROOT / "params.yaml", "study", [override])
        assert StudyPlan.of(study, cfg, "a" * 64).experiment == name, override
    for override in ("pretrain.epochs=5", "evaluate.linear.max_train_images=500", "seed=3"):
        cfg = load_config(ROOT / "params.yaml", "study", [override])
        assert StudyPlan.of(study, cfg, "a" * 64).experiment != name, override
    assert StudyPlan.of(study, base, "b" * 64).experiment != name
