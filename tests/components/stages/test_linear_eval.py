"""Stage ``linear-eval`` end to end on a real Fashion-MNIST slice and a random-init encoder."""

import json

import pytest
import torch

from components.config import ModelConfig
from components.evaluation.features import FeatureCache
from components.evaluation.inputs import load_pretrained_encoder
from components.stage_api import StagePaths
from components.stages.cli import main
from components.stages.runner import stage_function
from tests.components.evaluation.helpers import FMNIST, SMALL_MODEL, build_project

pytestmark = pytest.mark.skipif(not FMNIST.is_dir(), reason=f"{FMNIST} not present")


@pytest.mark.slow
def test_linear_eval_writes_metrics_plots_and_reuses_cached_features(tmp_path, monkeypatch):
    cfg, _ = build_project(tmp_path)
    encoder_path = StagePaths.of(cfg).stage_dir("pretrain") / "encoder.pt"
    before = encoder_path.read_bytes()
    weights = load_pretrained_encoder(encoder_path, ModelConfig(**SMALL_MODEL))[0].state_dict()

    result = stage_function("linear-eval")(cfg)
    out = StagePaths.of(cfg).stage_dir("linear-eval")
    stored = json.loads((out / "metrics.json").read_text())
    assert stored == pytest.approx(result.metrics)
    for name in ("linear_top1", "linear_top5", "knn_top1"):
        assert 0.1 < stored[name] <= 1.0  # well above chance even for a random-init encoder
    assert stored["linear_top5"] >= stored["linear_top1"]
    assert stored["l2_linear"] in (1e-4, 1e-2)
    assert stored["images_linear"] + stored["images_linear_val"] == 600  # train = fit + val
    assert 0.1 < stored["linear_val_top1"] <= 1.0 and 0.1 < stored["knn_val_top1"] <= 1.0
    assert {p.name for p in result.artifacts} >= {"confusion.png", "per_class.png",
                                                  "embedding.png", "metrics.json"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in result.artifacts)
    # frozen: the checkpoint and the weights it holds are untouched
    assert encoder_path.read_bytes() == before
    again = load_pretrained_encoder(encoder_path, ModelConfig(**SMALL_MODEL))[0].state_dict()
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # train + test

    # second run: every feature comes from the cache, no forward pass
    encoded = []
    original = FeatureCache.features

    def counting(self, *args, **kwargs):
        features = original(self, *args, **kwargs)
        encoded.append(self.stats["images_encoded"])
        return features

    monkeypatch.setattr(FeatureCache, "features", counting)
    second = stage_function("linear-eval")(cfg)
    assert encoded == [0, 0] and second.tags["feature_cache_hits"] == "2"
    assert second.metrics["linear_top1"] == result.metrics["linear_top1"]


def test_missing_encoder_is_a_clear_error_without_metrics(tmp_path, capsys):
    cfg, params = build_project(tmp_path, with_encoder=False)
    code = main(["linear-eval", "--params", str(params)])
    assert code == 2
    err = capsys.readouterr().err
    assert "encoder.pt" in err and "pretrain" in err
    assert not (StagePaths.of(cfg).stage_dir("linear-eval") / "metrics.json").exists()


def test_encoder_of_another_architecture_is_refused(tmp_path, capsys):
    from tests.components.evaluation.helpers import save_random_encoder

    cfg, params = build_project(tmp_path, with_encoder=False)
    save_random_encoder(StagePaths.of(cfg).stage_dir("pretrain") / "encoder.pt",
                        model={"arch": "small", "width": 0.5})
    assert main(["linear-eval", "--params", str(params)]) == 2
    assert "architecture mismatch" in capsys.readouterr().err
    assert not (StagePaths.of(cfg).stage_dir("linear-eval") / "metrics.json").exists()


def test_classes_that_do_not_match_labels_are_refused(tmp_path, capsys):
    cfg, params = build_project(tmp_path)
    manifest_path = StagePaths.of(cfg).dataset(cfg.data.source) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["classes"] = manifest["classes"][:5]  # labels go up to 9
    manifest_path.write_text(json.dumps(manifest))
    for stage in ("linear-eval", "finetune", "baselines"):
        assert main([stage, "--params", str(params)]) == 2
        err = capsys.readouterr().err
        assert "manifest.json" in err and "5 classes" in err, err
        assert not (StagePaths.of(cfg).stage_dir(stage) / "metrics.json").exists()
