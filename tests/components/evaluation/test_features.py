"""Input adaptation, frozen feature extraction and the feature cache, on real small data."""

from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import ModelConfig
from components.evaluation.features import FeatureCache, adapt_images, encode
from components.evaluation.inputs import load_pretrained_encoder
from components.io import file_sha256
from components.stage_api import StagePaths
from tests.components.evaluation.helpers import (
    FMNIST,
    SMALL_MODEL,
    save_random_encoder,
    write_fmnist,
    write_rgb16,
)

pytestmark = pytest.mark.skipif(not FMNIST.is_dir(), reason=f"{FMNIST} not present")


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return write_fmnist(tmp_path_factory.mktemp("data") / "fmnist", n_train=300, n_test=100)


def test_adapt_images_channels_and_size():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    grey = adapt_images(rgb, in_channels=1, image_size=16)
    expected = (rgb.astype(np.float64) / 255) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(grey[:, 0].numpy(), expected, atol=1e-6)
    up = adapt_images(rgb, in_channels=1, image_size=28)
    assert up.shape == (4, 1, 28, 28) and float(up.min()) >= 0 and float(up.max()) <= 1
    mono = rng.integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    three = adapt_images(mono, in_channels=3, image_size=8)
    assert three.shape == (2, 3, 8, 8)
    assert torch.equal(three[:, 0], three[:, 2]) and torch.equal(three[:, 0], adapt_images(mono, 1, 8)[:, 0])
    flat = np.full((1, 10, 10, 1), 128, np.uint8)  # bilinear resize keeps a constant image constant
    np.testing.assert_allclose(adapt_images(flat, 1, 28).numpy(), 128 / 255, atol=1e-6)


def test_frozen_extraction_leaves_weights_bit_identical(tmp_path, fmnist):
    path = save_random_encoder(tmp_path / "encoder.pt")
    encoder, spec = load_pretrained_encoder(path, ModelConfig(**SMALL_MODEL))
    encoder.train()  # even a module left in train mode must not update BN statistics
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    features = encode(encoder, fmnist.split("train"), None, spec.in_channels, spec.image_size, 64)
    assert features.shape == (300, encoder.feature_dim) and features.dtype == np.float32
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert encoder.training  # mode restored
    assert all(p.grad is None for p in encoder.parameters())
    again = encode(encoder, fmnist.split("train"), np.arange(10), 1, 28, 4)
    np.testing.assert_allclose(again, features[:10], rtol=1e-5, atol=1e-5)


def test_cache_reuses_features_and_keys_on_encoder_bytes(tmp_path, fmnist):
    path = save_random_encoder(tmp_path / "encoder.pt", seed=0)
    encoder, spec = load_pretrained_encoder(path, ModelConfig(**SMALL_MODEL))
    calls = []
    encoder.register_forward_hook(lambda module, inputs, output: calls.append(len(output)))
    cache = FeatureCache(tmp_path / "cache")
    digest = file_sha256(path)
    first = cache.features(encoder, digest, fmnist, "test", 1, 28, batch_size=64)
    assert sum(calls) == 100 and cache.stats == {"hits": 0, "misses": 1, "images_encoded": 100}
    second = FeatureCache(tmp_path / "cache").features(encoder, digest, fmnist, "test", 1, 28)
    assert sum(calls) == 100  # no forward pass: read from disk
    np.testing.assert_array_equal(first, second)
    # another split, an index subset, another encoder file: each is its own entry
    cache.features(encoder, digest, fmnist, "train", 1, 28, indices=np.arange(20))
    other = save_random_encoder(tmp_path / "other.pt", seed=1)
    assert file_sha256(other) != digest
    cache.features(encoder, file_sha256(other), fmnist, "test", 1, 28)
    assert cache.stats["misses"] == 3 and sum(calls) == 100 + 20 + 100
    assert len(list(Path(tmp_path / "cache").glob("*.npy"))) == 3


def test_extraction_adapts_a_three_channel_16px_set(tmp_path):
    dataset = write_rgb16(tmp_path / "rgb16")
    path = save_random_encoder(tmp_path / "encoder.pt")
    encoder, spec = load_pretrained_encoder(path, ModelConfig(**SMALL_MODEL))
    features = FeatureCache(tmp_path / "cache").features(
        encoder, file_sha256(path), dataset, "test", spec.in_channels, spec.image_size)
    assert features.shape == (60, encoder.feature_dim) and np.isfinite(features).all()


def test_paths_helper_points_at_pretrain_output(tmp_path):
    from components.config import config_from_dict

    cfg = config_from_dict({"paths": {"data": str(tmp_path), "outputs": str(tmp_path / "o")}})
    assert StagePaths.of(cfg).encoder == tmp_path / "o" / "pretrain" / "encoder.pt"


def test_torch_threads_is_restored():
    from components.stages.runner import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
