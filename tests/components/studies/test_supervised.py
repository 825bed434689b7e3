"""The supervised reference of the batch-epochs study: recipe, images, a real trial, its key."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.config import load_config
from components.data.store import CanonicalDataset
from components.data.subsets import load_validation
from components.studies.grids import TRIAL_METHOD, is_supervised, study_named
from components.studies.plan import StudyPlan
from components.studies.supervised import supervised_recipe, supervised_rows
from components.studies.trial import TrialJob, run_trial
from tests.components.studies.conftest import DigitsData

ROOT = Path(__file__).resolve().parents[3]


def test_the_recipe_is_fine_tuning_at_the_trials_batch_and_epochs_lr_scaled_linearly() -> None:
    cfg = load_config(ROOT / "params.yaml", "study",
                      ["pretrain.batch_size=512", "pretrain.epochs=8"])
    recipe, finetune = supervised_recipe(cfg), cfg.evaluate.finetune
    assert (recipe.epochs, recipe.batch_size, recipe.min_steps) == (8, 512, 0)
    assert recipe.lr == finetune.lr * 512 / finetune.batch_size
    assert (recipe.weight_decay, recipe.augment) == (finetune.weight_decay, finetune.augment)


def test_it_learns_from_as_many_images_as_pretraining_none_of_them_validation() -> None:
    cfg = load_config(ROOT / "params.yaml", "study")  # max_images 6,000, subset_seed 0
    val = np.arange(0, 60_000, 10)
    rows = supervised_rows(cfg, 60_000, val)
    assert len(rows) == cfg.pretrain.max_images == 6000
    assert not np.intersect1d(rows, val).size and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, supervised_rows(cfg, 60_000, val))  # seeded
    other = load_config(ROOT / "params.yaml", "study", ["pretrain.subset_seed=1"])
    assert not np.array_equal(rows, supervised_rows(other, 60_000, val))


def test_batch_epochs_has_supervised_rows_at_every_scale() -> None:
    study = study_named("batch-epochs")
    for scale in ("smoke", "small", "full"):
        levels = study.axes[0].levels[scale]
        supervised = [level for level in levels if is_supervised(level)]
        assert supervised and len(supervised) < len(levels)
        trials = study.trials(scale)
        assert {t.overrides.get(TRIAL_METHOD, "simclr") for t in trials} == {"simclr", "supervised"}
    assert [t.name for t in study.trials("smoke")][-2:] == [
        "supervised, batch 32, epochs 1", "supervised, batch 32, epochs 2"]


def test_a_supervised_trial_trains_on_labels_and_is_probed_like_a_simclr_trial(
        digits_data: DigitsData) -> None:
    overrides = {"pretrain.epochs": 3, "pretrain.batch_size": 64, "pretrain.max_images": 512,
                 TRIAL_METHOD: "supervised"}
    job = TrialJob("batch-epochs", "supervised", 1, 1, digits_data.cfg.model_dump(mode="json"),
                   overrides, str(digits_data.dataset), str(digits_data.subsets), False)
    reported = []
    summary, weights = run_trial(job, job.config(), None, lambda m, s: reported.append(m))
    assert reported == []  # no pretraining epochs
    metrics = summary["metrics"]
    assert summary["status"] == "finished" and metrics["epochs_trained"] == 3
    assert metrics["pretrain_cpu_s"] == 0 and metrics["supervised_s"] > 0
    val = load_validation(digits_data.subsets, CanonicalDataset(digits_data.dataset))
    assert metrics["images_supervised"] == 512 and metrics["images_probe_val"] == len(val)
    # labels teach the encoder: its classifier and the frozen probe both score well on digits
    assert metrics["supervised_val_top1"] > 0.6 and metrics["linear_val_top1"] > 0.6
    assert metrics["final_loss"] == summary["history"][-1]["loss"]
    assert not [k for k in metrics if k.endswith("_top1") and "_val_" not in k]  # no test score
    assert {k.split(".")[0] for k in weights} == {"encoder", "head"}


def test_the_fine_tuning_recipe_keys_the_supervised_trials_only() -> None:
    """A change of evaluate.finetune is a new experiment when the study has supervised
    trials (they train with it), not for a study of SimCLR trials only."""
    base = load_config(ROOT / "params.yaml", "study")
    changed = load_config(ROOT / "params.yaml", "study", ["evaluate.finetune.lr=0.2"])
    for name, differs in (("batch-epochs", True), ("temperature", False)):
        study = study_named(name)
        before = StudyPlan.of(study, base, "a" * 64).experiment
        assert (StudyPlan.of(study, changed, "a" * 64).experiment != before) is differs, name
