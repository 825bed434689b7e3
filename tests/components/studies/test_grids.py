"""The studies as data: every grid expands to unique, valid trials at every scale."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.config import load_config
from components.errors import ConfigError
from components.studies.grids import MOOT, SCALES, STUDIES, TRIAL_METHOD, is_supervised, study_named
from components.studies.plan import StudyPlan

ROOT = Path(__file__).resolve().parents[3]
# the preset and overrides each scale is run with (tests: the tiny preset, 2 x 2 grids)
RUN_WITH = {"smoke": ("tiny", ["study.scale=smoke"]), "small": ("study", []),
            "full": ("study-gpu", [])}


@pytest.mark.parametrize("scale", SCALES)
def test_every_study_expands_to_valid_unique_trials_under_its_preset(scale: str) -> None:
    """Each scale's preset sets that scale, and every trial's configuration validates (the
    overrides name real keys with legal values: batch vs images, ops, head layers...)."""
    cfg = load_config(ROOT / "params.yaml", *RUN_WITH[scale])
    assert cfg.study.scale == scale
    for study in STUDIES.values():
        plan = StudyPlan.of(study, cfg, content_hash="0" * 64)
        names = plan.names
        assert len(names) == len(set(names)) > 1, study.name
        for item in plan.trials:
            assert item.config.pretrain.knn_every == 0  # the monitor reads test: never in a study
            assert item.config.seed == cfg.seed + item.trial.seed == item.overrides["seed"]
            assert len(item.trial.cell) == len(study.table_axes())


def test_smoke_grids_are_at_most_two_by_two() -> None:
    """Two levels per axis, at most 4 trials; batch-epochs adds its supervised reference row."""
    for study in STUDIES.values():
        for axis in study.axes:
            levels = [level for level in axis.levels["smoke"] if not is_supervised(level)]
            assert len(levels) == 2, (study.name, axis.name)
            assert len(axis.levels["smoke"]) - len(levels) <= 1, (study.name, axis.name)
        trials = [t for t in study.trials("smoke") if TRIAL_METHOD not in t.overrides]
        assert len(trials) <= 4 and all(not t.variant for t in trials), study.name


def test_augmentation_pairs_are_one_branch_and_symmetric() -> None:
    """Figure 5: the diagonal is one op, off the diagonal two; the second view is the image
    itself; with 7 ops, 28 trials (the fixed op order makes (a, b) the same as (b, a))."""
    study = study_named("augmentations")
    trials = study.trials("small")
    assert len(trials) == 7 * 8 // 2
    by_cell = {t.cell: t for t in trials}
    assert by_cell[("crop", "crop")].overrides["augment.ops"] == ["crop", "flip"]
    assert by_cell[("crop", "crop")].name == "crop"
    assert by_cell[("crop", "color")].overrides["augment.ops"] == ["crop", "flip", "color"]
    assert ("color", "crop") not in by_cell
    for trial in trials:
        assert trial.overrides["augment.second_view_ops"] == []
        assert trial.overrides["augment.blur"] is True
    cfg = load_config(ROOT / "params.yaml", "study")
    item = StudyPlan.of(study, cfg, "").trial_named("blur, rotate")
    assert item.config.augment.ops == ["rotate", "blur"]  # the order they apply in


def test_no_head_is_crossed_with_the_output_dimension_once() -> None:
    trials = study_named("head").trials("small")
    none = [t for t in trials if t.cell[0] == "none"]
    assert [t.cell for t in none] == [("none", MOOT)] * 2  # one per seed
    assert all("model.projection_dim" not in t.overrides for t in none)
    assert len(trials) == (1 + 2 * 3) * 2


def test_each_loss_tunes_its_own_hyper_parameter_within_its_cells() -> None:
    trials = study_named("loss").trials("small")
    by_loss: dict[str, set[str]] = {}
    for trial in trials:
        tuned = {"pretrain.temperature", "pretrain.loss.margin"} & set(trial.overrides)
        by_loss.setdefault(trial.overrides["pretrain.loss.name"], set()).update(tuned)
    assert by_loss == {"nt_xent": {"pretrain.temperature"},
                       "nt_logistic": {"pretrain.temperature"},
                       "margin_triplet": {"pretrain.loss.margin"}}
    assert len(trials) == 3 * 2 * 3


def test_unknown_study_names_the_studies() -> None:
    with pytest.raises(ConfigError, match=r"unknown study 'colour'; studies: augmentations, "
                                          r"colour-strength, head, loss, temperature, batch-epochs"):
        study_named("colour")
