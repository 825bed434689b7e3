"""No choice reads the test split: permuting the test labels changes test scores, nothing else.

Every chooser (linear-probe L2, kNN on validation, fine-tuning's validation curve, the
baselines' recipe choice) runs twice on the same data, once with the true test labels and
once with them shuffled (same class counts, so the data set still validates). Every
``*_val_*`` metric, every chosen L2 and every chosen recipe must come out identical; only the
test numbers may move. A chooser that peeked at test labels would be caught here.
"""

from __future__ import annotations

import numpy as np
import pytest

from components.stage_api import StagePaths
from components.stages.runner import stage_function
from tests.components.evaluation.helpers import FMNIST, build_project

pytestmark = pytest.mark.skipif(not FMNIST.is_dir(), reason=f"{FMNIST} not present")
STAGES = ("linear-eval", "finetune", "baselines")


def _choices(metrics: dict[str, float]) -> dict[str, float]:
    """What was chosen or measured on validation (anything but a test score)."""
    return {k: v for k, v in metrics.items()
            if "_val_" in k or k.startswith(("l2_", "epochs_", "steps_", "lr_", "augment_", "images_"))}


@pytest.mark.slow
def test_permuted_test_labels_change_no_choice(tmp_path):
    cfg, _ = build_project(tmp_path)
    cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={
        "supervised": cfg.evaluate.supervised.model_validate(
            {"recipes": [{"lr": 1.0e-6}, {}], "full_recipes": [{}]})})})
    true_runs = {stage: stage_function(stage)(cfg).metrics for stage in STAGES}

    labels_file = StagePaths.of(cfg).dataset(cfg.data.source) / "test" / "labels.npy"
    labels = np.load(labels_file)
    np.save(labels_file, np.random.default_rng(0).permutation(labels))
    shuffled_runs = {stage: stage_function(stage)(cfg).metrics for stage in STAGES}

    for stage in STAGES:
        chosen = _choices(true_runs[stage])
        assert chosen and chosen == _choices(shuffled_runs[stage]), stage
    assert {"linear_val_top1", "knn_val_top1", "l2_linear"} <= set(true_runs["linear-eval"])
    assert "finetune_1pct_val_top1" in true_runs["finetune"]
    # the test numbers did see the labels (shuffled labels score about chance)
    assert true_runs["linear-eval"]["linear_top1"] != shuffled_runs["linear-eval"]["linear_top1"]
    assert shuffled_runs["linear-eval"]["linear_top1"] < 0.3 < true_runs["linear-eval"]["linear_top1"]
