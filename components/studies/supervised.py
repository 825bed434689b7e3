"""The supervised reference of a study: the trial's encoder trained on labels from random init.

A trial with ``study.trial_method: supervised`` (the batch-epochs study's comparison curve:
the paper's "contrastive learning benefits more from bigger batches and longer training than
its supervised counterpart") trains the same encoder (``model``) plus a linear classifier on
the labels of as many training images as SimCLR pretrains on (``pretrain.max_images``, a
sample seeded by ``pretrain.subset_seed``, taken outside the validation split: labelled
images that choose nothing), for ``pretrain.epochs`` epochs of ``pretrain.batch_size``. The
recipe is the fine-tuning one (:mod:`components.evaluation.finetune`: SGD with Nesterov
momentum, per-step cosine, weight decay, crop + flip) with its learning rate scaled linearly
from ``evaluate.finetune.batch_size`` to the trial's batch (the linear scaling rule of SGD),
no minimum step count. The frozen encoder is then probed like every SimCLR trial's, so both
curves compare representations under one protocol; the classifier's own validation top-1 is
reported beside it (``supervised_val_top1``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from components.config import FinetuneConfig, PipelineConfig
from components.data.store import CanonicalDataset
from components.evaluation.device import EvalRuntime
from components.models.simclr import SimCLRModel


def supervised_recipe(cfg: PipelineConfig) -> FinetuneConfig:
    """The fine-tuning recipe at the trial's batch size and epochs, lr scaled linearly."""
    base = cfg.evaluate.finetune
    batch = cfg.pretrain.batch_size
    return base.model_copy(update={"epochs": cfg.pretrain.epochs, "batch_size": batch,
                                   "lr": base.lr * batch / base.batch_size, "head_lr": None,
                                   "min_steps": 0})


def supervised_rows(cfg: PipelineConfig, train_size: int, val: np.ndarray) -> np.ndarray:
    """Sorted train-split rows the supervised trial learns from: ``pretrain.max_images`` of
    the split minus ``val`` (all of them when unset), sampled with ``pretrain.subset_seed``."""
    from components.evaluation.holdout import probe_indices

    seed = cfg.pretrain.subset_seed if cfg.pretrain.subset_seed is not None else cfg.seed
    return probe_indices(train_size, val, cfg.pretrain.max_images, seed)


def train_supervised(cfg: PipelineConfig, dataset: CanonicalDataset, val: np.ndarray,
                     runtime: EvalRuntime) -> tuple[SimCLRModel, list[dict[str, Any]],
                                                    dict[str, float]]:
    """Train a randomly initialised model's encoder on labels (see the module docstring).

    ``val``: sorted train-split indices of the validation split. Returns the model (its
    encoder trained, its projection head untouched) on ``runtime.device``, one history row
    per epoch (``loss``: the training cross-entropy, ``train_top1``, ``val_top1``: on a
    fixed validation sample, the last on all of it) and the metrics
    ``supervised_val_top1``, ``supervised_s``, ``images_supervised``.
    """
    from components.evaluation.finetune import finetune
    from components.evaluation.holdout import SplitView
    from components.models.simclr import build_simclr_model

    train = dataset.split("train")
    height, _, channels = dataset.image_shape
    rows = supervised_rows(cfg, len(train), val)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_simclr_model(cfg.model, in_channels=channels, image_size=height)
    images = SplitView(train, rows)
    result = finetune(model.encoder, len(dataset.classes), images, images.labels,
                      SplitView(train, val), supervised_recipe(cfg), channels, height,
                      seed=cfg.seed, name="supervised trial",
                      eval_batch_size=cfg.evaluate.batch_size, runtime=runtime)
    metrics = {"supervised_val_top1": result.val_top1, "supervised_s": result.seconds,
               "images_supervised": float(len(rows))}
    # the study's per-epoch curves name the training loss "loss", as pretraining's rows do
    history = [{"epoch": row["epoch"], "step": row["step"], "loss": row["train_loss"],
                "train_top1": row["train_top1"], "val_top1": row["val_top1"]}
               for row in result.history]
    return runtime.place(model).eval(), history, metrics


__all__ = ["supervised_recipe", "supervised_rows", "train_supervised"]
