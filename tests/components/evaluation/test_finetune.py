"""Fine-tuning trains the whole encoder on exactly the images it is given."""

import numpy as np
import pytest
import torch

from components.config import FinetuneConfig, ModelConfig
from components.evaluation.finetune import finetune
from components.evaluation.inputs import load_pretrained_encoder, random_encoder
from tests.components.evaluation.helpers import (
    FMNIST,
    SMALL_MODEL,
    save_random_encoder,
    write_fmnist,
)

pytestmark = pytest.mark.skipif(not FMNIST.is_dir(), reason=f"{FMNIST} not present")


def test_finetune_changes_encoder_and_learns(tmp_path):
    dataset = write_fmnist(tmp_path / "fmnist", n_train=300, n_test=100)
    train, test = dataset.split("train"), dataset.split("test")
    encoder, spec = load_pretrained_encoder(save_random_encoder(tmp_path / "e.pt"),
                                            ModelConfig(**SMALL_MODEL))
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    idx = np.arange(0, 300, 2)
    cfg = FinetuneConfig(epochs=3, batch_size=32, lr=0.05, augment=True, monitor_images=50)
    result = finetune(encoder, 10, train.images(idx), train.labels[idx], test, cfg,
                      spec.in_channels, spec.image_size, seed=0)
    changed = [k for k, v in encoder.state_dict().items()
               if v.dtype.is_floating_point and not torch.equal(before[k], v)]
    assert "conv1.weight" in changed and "layer4.0.conv2.weight" in changed
    assert result.train_images == 150 and result.test_scores.shape == (100, 10)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert (result.test_scores.argmax(1) == test.labels).mean() > 0.2  # chance is 0.1


def test_min_steps_and_tiny_batches(tmp_path):
    dataset = write_fmnist(tmp_path / "fmnist", n_train=50, n_test=30)
    train = dataset.split("train")
    encoder = random_encoder(ModelConfig(**SMALL_MODEL), 1, 28, seed=0)
    cfg = FinetuneConfig(epochs=1, batch_size=4, min_steps=7, augment=False, monitor_images=10)
    result = finetune(encoder, 10, train.images(np.arange(9)), train.labels[:9],
                      dataset.split("test"), cfg, 1, 28, seed=0)
    # 9 images in batches of 4 -> 2 steps per epoch (the lone last image is skipped: BN)
    assert result.history[-1]["step"] == 7 and len(result.history) == 4
