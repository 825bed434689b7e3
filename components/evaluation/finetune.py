"""Fine-tuning: the whole encoder plus a linear head, trained on a labelled image set.

Used for SimCLR's semi-supervised protocol (pretrained encoder, 1% / 10% label subsets) and
for the supervised baselines (same function, randomly initialised encoder). Protocol:

- SGD with Nesterov momentum 0.9, ``lr`` for the encoder and ``head_lr`` for the head, weight
  decay on weights (not on biases / BatchNorm), per-step cosine decay to 0.
- ``steps = max(epochs * ceil(n / batch_size), min_steps)``: a tiny subset still gets enough
  updates. Batches of fewer than 2 images are skipped (BatchNorm in train mode needs 2).
- Crop + flip (``CropFlipAugment``) on every training batch when ``augment`` is on.
- Each epoch logs the mean train loss and top-1 on a fixed sample (``monitor_images``) of
  the *validation* split: the curve. The final model's validation scores are what a recipe
  choice (:func:`choose_recipe`) reads; the test split is not an argument here at all: the
  stage scores it once with the model this returns (:func:`score`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.config import FinetuneConfig, RecipeConfig
from components.evaluation.device import CPU, EvalRuntime
from components.evaluation.features import adapt_images, batched_forward
from components.optim import WarmupCosine

log = logging.getLogger(__name__)
# an epoch line at INFO once this many seconds have passed since the run's last INFO line (a
# recipe search runs many seconds-long fits: their header and done lines say enough)
PROGRESS_EVERY_S = 30.0


class Classifier(nn.Module):
    """Encoder f plus a linear head: (B, C, H, W) -> logits (B, num_classes)."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(int(encoder.feature_dim), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


@dataclass
class FinetuneResult:
    model: Classifier  # the final model (eval mode)
    val_scores: np.ndarray  # (N_val, C) logits of the final model on the whole validation split
    val_top1: float
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    seconds: float = 0.0
    train_images: int = 0
    steps: int = 0
    epochs: int = 0
    recipe: dict[str, Any] = field(default_factory=dict)  # the recipe actually trained


def with_recipe(cfg: FinetuneConfig, recipe: RecipeConfig | None) -> FinetuneConfig:
    """``cfg`` with the recipe's non-None fields substituted."""
    if recipe is None:
        return cfg
    return cfg.model_copy(update={k: v for k, v in recipe.model_dump().items() if v is not None})


def _param_groups(model: Classifier, cfg: FinetuneConfig) -> list[dict[str, Any]]:
    groups = []
    for module, lr in ((model.encoder, cfg.lr), (model.head, cfg.head_lr or cfg.lr)):
        decay = [p for p in module.parameters() if p.ndim > 1]
        no_decay = [p for p in module.parameters() if p.ndim <= 1]
        groups += [{"params": decay, "lr": lr, "lr_scale": lr, "weight_decay": cfg.weight_decay},
                   {"params": no_decay, "lr": lr, "lr_scale": lr, "weight_decay": 0.0}]
    return groups


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, train: Any, runtime: EvalRuntime, batch_size: int,
                          in_channels: int, image_size: int, max_images: int = 4096) -> None:
    """Replace BatchNorm running statistics by their exact average over (up to ``max_images``
    of) the un-augmented training images (rows source ``train``, streamed). After a short
    fine-tuning run the exponential moving averages still remember the initial (or
    pretraining) statistics, which can make the eval-mode network predict a single class."""
    from components.evaluation.batches import index_batches, stream

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    try:
        rows = np.arange(min(len(train), max_images))
        for images in stream(train, index_batches(rows, batch_size), runtime.device):
            with runtime.autocast():
                model(runtime.layout(adapt_images(images, in_channels, image_size)))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)


def finetune(
    encoder: nn.Module,
    num_classes: int,
    images: Any,
    labels: np.ndarray,
    val: Any,
    cfg: FinetuneConfig,
    in_channels: int,
    image_size: int,
    seed: int = 0,
    name: str = "finetune",
    eval_batch_size: int = 512,
    runtime: EvalRuntime = CPU,
) -> FinetuneResult:
    """Train ``encoder`` (in place, moved to ``runtime.device``) + a new head on ``images`` /
    ``labels`` (N,): a rows source (a :class:`~components.evaluation.holdout.SplitView` of the
    store: streamed, each batch read and converted to float on the device) or an in-memory
    uint8 array (N, H, W, C).

    ``val`` (a :class:`~components.evaluation.holdout.SplitView` or any object with
    ``images(indices)``, ``labels`` and ``len``) gives the per-epoch curve and the final
    validation scores. Returns the final model, in eval mode, on ``runtime.device``.
    """
    from components.evaluation.batches import ArrayRows, stream

    started = time.perf_counter()
    val_labels = np.asarray(val.labels)  # a sealed test split raises here: it cannot choose
    train = ArrayRows(images, labels) if isinstance(images, np.ndarray) else images
    y_train = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    n = len(train)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Classifier(encoder, num_classes)
    model = runtime.place(model)
    generator = torch.Generator().manual_seed(seed)
    augment = None
    if cfg.augment:
        from components.augment import CropFlipAugment

        augment = CropFlipAugment(image_size)
    steps_per_epoch = max(n // cfg.batch_size + (n % cfg.batch_size >= 2), 1)
    total_steps = max(cfg.epochs * steps_per_epoch, cfg.min_steps)
    epochs = math.ceil(total_steps / steps_per_epoch)
    optimizer = torch.optim.SGD(_param_groups(model, cfg), momentum=0.9, nesterov=True)
    # each group's lr_scale times the per-step cosine factor (peak 1, no warm-up)
    schedule = WarmupCosine(1.0, 0, total_steps)
    monitor = np.sort(np.random.default_rng(seed).choice(
        len(val), size=min(cfg.monitor_images, len(val)), replace=False))
    log.info("%s: %d images, %d classes, %d steps (%d epochs of %d), lr %g, augment=%s on %s",
             name, n, num_classes, total_steps, epochs, steps_per_epoch, cfg.lr, cfg.augment,
             runtime.device)
    history: list[dict[str, Any]] = []
    step = 0
    last_shown = started
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        # this epoch's batches, in order: at most total_steps - step, none of fewer than 2 images
        batches = [order[start:start + cfg.batch_size] for start in range(0, n, cfg.batch_size)]
        batches = [batch for batch in batches if len(batch) >= 2][:total_steps - step]
        losses, correct, seen = [], 0, 0
        for batch, x in zip(batches, stream(train, [b.numpy() for b in batches], runtime.device),
                            strict=True):
            y = y_train[batch].to(runtime.device, non_blocking=True)
            x = adapt_images(x, in_channels, image_size)
            if augment is not None:
                x = augment(x, generator=generator)
            schedule.apply(optimizer, step)
            with runtime.autocast():
                logits = model(runtime.layout(x))
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            correct += int((logits.argmax(dim=1) == y).sum())
            seen += len(y)
            step += 1
        common = (runtime, eval_batch_size, in_channels, image_size)
        if epoch == epochs - 1:
            recalibrate_batchnorm(model, train, runtime, eval_batch_size, in_channels, image_size)
            monitor_top1 = None
        else:
            monitor_scores = batched_forward(model, val, monitor, *common)
            monitor_top1 = float((monitor_scores.argmax(1) == val_labels[monitor]).mean())
        row = {"epoch": epoch + 1, "step": step,
               "train_loss": float(np.mean(losses)) if losses else float("nan"),
               "train_top1": correct / max(seen, 1)}
        if monitor_top1 is None:  # last epoch: the whole validation split, final model
            val_scores = batched_forward(model, val, None, *common)
            val_top1 = float((val_scores.argmax(1) == val_labels).mean())
            row["val_top1"] = val_top1
        else:
            row["val_top1"] = monitor_top1
        history.append(row)
        # progress of a long fit at INFO, every epoch at DEBUG; the last epoch is the done line
        now = time.perf_counter()
        shown = now - last_shown >= PROGRESS_EVERY_S and epoch < epochs - 1
        last_shown = now if shown else last_shown
        log.log(logging.INFO if shown else logging.DEBUG,
                "%s: epoch %d/%d loss %.4f train_top1 %.3f val_top1 %.3f", name, epoch + 1,
                epochs, row["train_loss"], row["train_top1"], row["val_top1"])
    model.eval()
    seconds = time.perf_counter() - started
    log.info("%s: done in %.1f s (%d epochs): loss %.4f train_top1 %.3f val_top1 %.4f", name,
             seconds, epochs, history[-1]["train_loss"], history[-1]["train_top1"], val_top1)
    recipe = {"epochs": epochs, "steps": total_steps, "lr": cfg.lr, "augment": cfg.augment}
    return FinetuneResult(model, val_scores, val_top1, history, seconds, n, total_steps, epochs,
                          recipe)


def choose_recipe(
    train: Any,
    recipes: list[RecipeConfig],
    make_encoder: Any,
    num_classes: int,
    val: Any,
    cfg: FinetuneConfig,
    in_channels: int,
    image_size: int,
    seed: int = 0,
    name: str = "finetune",
    eval_batch_size: int = 512,
    runtime: EvalRuntime = CPU,
) -> tuple[FinetuneResult, list[dict[str, Any]]]:
    """Train one fresh ``make_encoder()`` per recipe on ``train`` (a SplitView), keep the best
    validation top-1 (ties: the earlier recipe). Returns (best result, one row per recipe).
    ``train`` is streamed from the store by every run (never loaded whole)."""
    labels = np.asarray(train.labels)
    best, rows = None, []
    for number, recipe in enumerate(recipes):
        result = finetune(make_encoder(), num_classes, train, labels, val, with_recipe(cfg, recipe),
                          in_channels, image_size, seed=seed, name=f"{name} recipe {number}",
                          eval_batch_size=eval_batch_size, runtime=runtime)
        rows.append({**result.recipe, "val_top1": result.val_top1, "seconds": result.seconds})
        if best is None or result.val_top1 > best.val_top1:
            best = result
    assert best is not None  # recipes has at least one entry (config)
    return best, rows


def score(model: nn.Module, split: Any, in_channels: int, image_size: int,
          batch_size: int = 512, runtime: EvalRuntime = CPU) -> np.ndarray:
    """Logits (N, C) of ``model`` (on ``runtime.device``) on every image of ``split`` (the one
    test scoring), streamed."""
    return batched_forward(model, split, None, runtime, batch_size, in_channels, image_size)
