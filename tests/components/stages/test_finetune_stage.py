"""Stage ``finetune``: exactly the subset files' images, whole encoder trained, full test split."""

import hashlib
import json

import numpy as np
import pytest

from components.data.subsets import read_subset
from components.stage_api import StagePaths
from components.stages.cli import main
from components.stages.runner import stage_function
from tests.components.evaluation.helpers import FMNIST, build_project

pytestmark = pytest.mark.skipif(not FMNIST.is_dir(), reason=f"{FMNIST} not present")


@pytest.mark.slow
def test_finetune_uses_exactly_the_subset_images(tmp_path):
    cfg, _ = build_project(tmp_path)
    paths = StagePaths.of(cfg)
    result = stage_function("finetune")(cfg)
    out = paths.stage_dir("finetune")
    metrics = json.loads((out / "metrics.json").read_text())
    record = json.loads((out / "history.json").read_text())
    for tag in ("1pct", "10pct"):
        indices = read_subset(paths.subsets / f"{tag}.txt", 600)
        assert metrics[f"images_finetune_{tag}"] == len(indices)
        assert record[tag]["train_images"] == len(indices)
        assert record[tag]["indices_sha256"] == hashlib.sha256(indices.astype(np.int64).tobytes()).hexdigest()
        assert 0.0 <= metrics[f"finetune_{tag}_top1"] <= metrics[f"finetune_{tag}_top5"] <= 1.0
        assert len(record[tag]["history"]) >= 2  # per-epoch curve rows
    assert metrics["images_finetune_1pct"] == 10 and metrics["images_finetune_10pct"] == 60
    names = {p.name for p in result.artifacts}
    assert {"curves.png", "confusion_1pct.png", "confusion_10pct.png", "metrics.json"} <= names


def test_missing_subset_file_is_a_clear_error(tmp_path, capsys):
    cfg, params = build_project(tmp_path)
    (StagePaths.of(cfg).subsets / "10pct.txt").unlink()
    for stage in ("finetune", "baselines"):
        assert main([stage, "--params", str(params)]) == 2
        err = capsys.readouterr().err
        assert "10pct.txt" in err and "subset" in err
        assert not (StagePaths.of(cfg).stage_dir(stage) / "metrics.json").exists()
