"""Stage ``transfer``: digits (8x8 grey) and a CIFAR-like 3-channel 16x16 set through a 28x28
grey encoder, each next to the random-init encoder's probe."""

import json

import pytest

from components.stage_api import StagePaths
from components.stages.cli import main
from components.stages.runner import stage_function
from tests.components.evaluation.helpers import FMNIST, build_project

pytestmark = pytest.mark.skipif(not FMNIST.is_dir(), reason=f"{FMNIST} not present")

TRANSFER = [{"kind": "digits", "path": None, "name": "digits"},
            {"kind": "cifar", "path": "/nonexistent/only-the-name-is-used", "name": "rgb16"}]


@pytest.mark.slow
def test_transfer_to_digits_and_a_three_channel_set(tmp_path):
    cfg, _ = build_project(tmp_path, transfer=TRANSFER)
    result = stage_function("transfer")(cfg)
    out = StagePaths.of(cfg).stage_dir("transfer")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == pytest.approx(result.metrics)
    for name in ("digits", "rgb16"):
        for prefix in ("transfer", "random_transfer"):
            assert 0.0 <= metrics[f"{prefix}_{name}_top1"] <= metrics[f"{prefix}_{name}_top5"] <= 1.0
        assert (out / f"confusion_{name}.png").is_file()
    assert metrics["transfer_digits_top1"] > 0.5  # 10 classes: even random conv features separate digits
    assert metrics["transfer_rgb16_top1"] > 0.9  # colour classes survive the luminance conversion
    assert not any(k.startswith("transfer_") and not k.endswith(("_top1", "_top5")) for k in metrics)


@pytest.mark.slow
def test_transfer_with_finetuning(tmp_path):
    cfg, params = build_project(tmp_path, transfer=TRANSFER[1:])
    assert main(["transfer", "--params", str(params), "--set", "evaluate.transfer_finetune=true"]) == 0
    metrics = json.loads((StagePaths.of(cfg).stage_dir("transfer") / "metrics.json").read_text())
    assert {"transfer_rgb16_finetune_top1", "supervised_transfer_rgb16_top1"} <= set(metrics)


def test_transfer_set_with_bad_classes_is_refused(tmp_path, capsys):
    cfg, params = build_project(tmp_path)
    manifest_path = StagePaths.of(cfg).transfer_dataset(cfg.data.transfer[0]) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["splits"]["test"]["counts_per_class"][0] += 1  # declared counts no longer match labels
    manifest_path.write_text(json.dumps(manifest))
    assert main(["transfer", "--params", str(params)]) == 2
    assert "counts_per_class" in capsys.readouterr().err
    assert not (StagePaths.of(cfg).stage_dir("transfer") / "metrics.json").exists()


def test_no_transfer_sets_is_an_empty_result(tmp_path):
    cfg, params = build_project(tmp_path, transfer=[])
    assert main(["transfer", "--params", str(params)]) == 0
    metrics = json.loads((StagePaths.of(cfg).stage_dir("transfer") / "metrics.json").read_text())
    assert metrics == {}
    timings = json.loads(StagePaths.of(cfg).timings_file("transfer").read_text())
    assert set(timings) == {"seconds_transfer"}
