"""Fine-tuning trains the whole encoder on exactly the images it is given."""

import numpy as np
import pytest
import torch

from components.config import FinetuneConfig, ModelConfig, RecipeConfig
from components.evaluation.finetune import choose_recipe, finetune, score
from components.evaluation.holdout import HeldOutTest, SealedLabelsError, SplitView
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
    val = SplitView(train, np.arange(1, 300, 2))
    cfg = FinetuneConfig(epochs=3, batch_size=32, lr=0.05, augment=True, monitor_images=50)
    result = finetune(encoder, 10, train.images(idx), train.labels[idx], val, cfg,
                      spec.in_channels, spec.image_size, seed=0)
    changed = [k for k, v in encoder.state_dict().items()
               if v.dtype.is_floating_point and not torch.equal(before[k], v)]
    assert "conv1.weight" in changed and "layer4.0.conv2.weight" in changed
    assert result.train_images == 150 and result.val_scores.shape == (150, 10)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[-1]["val_top1"] == result.val_top1 > 0.2  # chance is 0.1
    assert result.recipe == {"epochs": 3, "steps": 15, "lr": 0.05, "augment": True}
    test_scores = score(result.model, test, spec.in_channels, spec.image_size)
    assert (test_scores.argmax(1) == test.labels).mean() > 0.2


def test_min_steps_and_tiny_batches(tmp_path):
    dataset = write_fmnist(tmp_path / "fmnist", n_train=50, n_test=30)
    train = dataset.split("train")
    encoder = random_encoder(ModelConfig(**SMALL_MODEL), 1, 28, seed=0)
    cfg = FinetuneConfig(epochs=1, batch_size=4, min_steps=7, augment=False, monitor_images=10)
    result = finetune(encoder, 10, train.images(np.arange(9)), train.labels[:9],
                      SplitView(train, np.arange(9, 50)), cfg, 1, 28, seed=0)
    # 9 images in batches of 4 -> 2 steps per epoch (the lone last image is skipped: BN)
    assert result.history[-1]["step"] == 7 and len(result.history) == 4


def test_a_recipe_choice_handed_the_test_split_fails(tmp_path):
    """The test split's labels are sealed: any chooser given it as its validation split fails
    before training, and the one final scoring call is what reads them."""
    dataset = write_fmnist(tmp_path / "fmnist", n_train=60, n_test=30)
    train, test = dataset.split("train"), HeldOutTest(dataset)
    cfg = FinetuneConfig(epochs=1, batch_size=16, augment=False, monitor_images=10)

    def make():
        return random_encoder(ModelConfig(**SMALL_MODEL), 1, 28, seed=0)

    with pytest.raises(SealedLabelsError, match="final scoring"):
        finetune(make(), 10, train.images(), train.labels, test, cfg, 1, 28)
    with pytest.raises(SealedLabelsError):
        choose_recipe(SplitView(train, np.arange(60)), [RecipeConfig()], make, 10, test, cfg, 1, 28)
    assert test.label_reads == 0
    assert np.array_equal(test.final_labels(), dataset.split("test").labels)
    assert test.label_reads == 1


def test_choose_recipe_keeps_the_best_on_validation(tmp_path):
    dataset = write_fmnist(tmp_path / "fmnist", n_train=200, n_test=20)
    train = dataset.split("train")
    fit, val = SplitView(train, np.arange(0, 200, 2)), SplitView(train, np.arange(1, 200, 2))
    cfg = FinetuneConfig(epochs=1, batch_size=16, augment=False, monitor_images=20)
    recipes = [RecipeConfig(lr=1e-6), RecipeConfig(epochs=4, lr=0.05)]  # the first barely moves
    best, tried = choose_recipe(fit, recipes, lambda: random_encoder(ModelConfig(**SMALL_MODEL),
                                                                     1, 28, seed=0),
                                10, val, cfg, 1, 28)
    assert [row["lr"] for row in tried] == [1e-6, 0.05] and [row["epochs"] for row in tried] == [1, 4]
    assert best.recipe["lr"] == 0.05 and best.val_top1 == max(row["val_top1"] for row in tried)
