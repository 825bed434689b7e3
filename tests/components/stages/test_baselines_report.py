"""Stages ``baselines`` and ``report``: every SimCLR number lands next to its baseline."""

import json

import pytest

from components.data.subsets import load_validation
from components.evaluation.inputs import open_labelled_dataset
from components.evaluation.report import gains, results_rows
from components.stage_api import StagePaths
from components.stages.cli import main
from components.stages.runner import stage_function
from tests.components.evaluation.helpers import FMNIST, build_project

pytestmark = pytest.mark.skipif(not FMNIST.is_dir(), reason=f"{FMNIST} not present")


@pytest.mark.slow
def test_baselines_then_report(tmp_path, capsys):
    cfg, params = build_project(tmp_path)
    paths = StagePaths.of(cfg)
    baselines = stage_function("baselines")(cfg).metrics
    for name in ("random_linear_top1", "random_linear_top5", "random_knn_top1", "pixels_linear_top1",
                 "pixels_linear_top5", "supervised_1pct_top1", "supervised_10pct_top1",
                 "supervised_100pct_top1"):
        assert 0.0 <= baselines[name] <= 1.0, name
    val = len(load_validation(paths.subsets, open_labelled_dataset(paths.dataset(cfg.data.source))))
    assert baselines["images_supervised_1pct"] == 10
    assert baselines["images_supervised_100pct"] == 600 - val  # every training label outside val
    for tag in ("1pct", "10pct", "100pct"):  # each with its validation score and its budget
        assert 0.0 <= baselines[f"supervised_{tag}_val_top1"] <= 1.0
        assert baselines[f"epochs_supervised_{tag}"] >= 1 and baselines[f"steps_supervised_{tag}"] >= 1
    assert baselines["pixels_linear_top1"] > 0.6  # raw-pixel logistic regression on 600 images
    assert (paths.stage_dir("baselines") / "curves.png").is_file()

    # the SimCLR side, written as the other stages would
    simclr = {"linear-eval": {"linear_top1": 0.8, "linear_top5": 0.99, "knn_top1": 0.75},
              "finetune": {"finetune_1pct_top1": 0.6, "finetune_10pct_top1": 0.7},
              "transfer": {"transfer_digits_top1": 0.9, "random_transfer_digits_top1": 0.85}}
    for stage, values in simclr.items():
        (paths.stage_dir(stage)).mkdir(parents=True, exist_ok=True)
        (paths.stage_dir(stage) / "metrics.json").write_text(json.dumps(values))
    assert main(["report", "--params", str(params)]) == 0
    printed = capsys.readouterr().out
    table = (paths.stage_dir("report") / "results.md").read_text()
    assert table in printed
    line = next(row for row in table.splitlines() if "`finetune_1pct_top1`" in row)
    gain = 100 * (0.6 - baselines["supervised_1pct_top1"])
    assert "`supervised_1pct_top1`" in line and f"{gain:+.2f}" in line and "Semi-supervised" in line
    assert "`pixels_linear_top1`" in table and "`random_transfer_digits_top1`" in table
    epochs = baselines["epochs_supervised_1pct"]
    assert f"{epochs:.0f} ep / {baselines['steps_supervised_1pct']:.0f} steps" in line  # its budget
    report = json.loads((paths.stage_dir("report") / "metrics.json").read_text())
    assert report["gain_linear_top1"] == pytest.approx(0.8 - baselines["random_linear_top1"])
    assert report["gain_transfer_digits_top1"] == pytest.approx(0.05)


def test_results_rows_pair_each_metric_with_its_baselines():
    metrics = {"linear_top1": 0.9, "random_linear_top1": 0.7, "pixels_linear_top1": 0.8,
               "finetune_10pct_top1": 0.8, "finetune_1pct_top1": 0.6, "supervised_1pct_top1": 0.5,
               "transfer_digits_top1": 0.9, "transfer_digits_finetune_top1": 0.95,
               "supervised_transfer_digits_top1": 0.9}
    rows = [(r.metric, r.baseline) for r in results_rows(metrics)]
    assert rows == [("linear_top1", "random_linear_top1"), ("linear_top1", "pixels_linear_top1"),
                    ("finetune_1pct_top1", "supervised_1pct_top1"), ("finetune_10pct_top1", None),
                    ("transfer_digits_top1", None),
                    ("transfer_digits_finetune_top1", "supervised_transfer_digits_top1")]
    assert gains(metrics) == pytest.approx({"gain_linear_top1": 0.2, "gain_finetune_1pct_top1": 0.1,
                                            "gain_transfer_digits_finetune_top1": 0.05})


def test_report_without_metrics_is_a_clear_error(tmp_path, capsys):
    cfg, params = build_project(tmp_path, with_encoder=False, with_subsets=False)
    assert main(["report", "--params", str(params)]) == 2
    assert "no evaluation metrics.json" in capsys.readouterr().err
    assert not (StagePaths.of(cfg).stage_dir("report") / "metrics.json").exists()
