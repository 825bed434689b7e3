"""A trial encoder's scores on the validation split: linear probe on h (and on z), kNN on h.

The pipeline's linear protocol (:mod:`components.evaluation.linear`) without its last step:
the probe is fitted on a seeded sample of the training images outside the validation split
(``evaluate.linear.max_train_images``), its L2 chosen among ``evaluate.linear.l2_grid`` on the
versioned validation split (``data/subsets/val.txt``), and that validation top-1 is the score
(:func:`~components.evaluation.linear.validation_probe`: no refit on train + validation, no
test split). kNN (``evaluate.knn``) votes with the same fit rows as the bank.

``z = g(h)`` is the projection head applied to the same h in eval mode: the head study's
"evaluate on z" (paper, Table 3 / Figure 8).
"""

from __future__ import annotations

import numpy as np
import torch

from components.config import PipelineConfig
from components.data.store import CanonicalDataset
from components.evaluation.device import EvalRuntime
from components.evaluation.features import batched_forward
from components.evaluation.holdout import probe_indices, within_budget
from components.evaluation.knn import knn_top1
from components.evaluation.linear import validation_probe
from components.models.simclr import SimCLRModel


@torch.no_grad()
def project(head: torch.nn.Module, h: np.ndarray, runtime: EvalRuntime,
            batch_size: int = 4096) -> np.ndarray:
    """z = head(h) in eval mode: h float32 (N, D) -> z float32 (N, projection dim)."""
    was_training = head.training
    head.eval()
    try:
        out = [head(torch.as_tensor(h[start:start + batch_size], device=runtime.device)).float()
               .cpu().numpy() for start in range(0, len(h), batch_size)]
    finally:
        head.train(was_training)
    return np.concatenate(out) if out else np.empty((0, 0), np.float32)


def probe_trial(model: SimCLRModel, dataset: CanonicalDataset, val: np.ndarray,
                cfg: PipelineConfig, runtime: EvalRuntime, with_z: bool = False
                ) -> dict[str, float]:
    """``linear_val_top1``, ``l2_linear``, ``knn_val_top1`` (and ``linear_z_val_top1``,
    ``l2_linear_z``, ``knn_z_val_top1`` with ``with_z``), plus the image counters
    ``images_probe_fit`` / ``images_probe_val``.

    ``model`` on ``runtime.device``; ``val``: sorted train-split indices of the validation split.
    """
    train = dataset.split("train")
    height, _, channels = dataset.image_shape
    lin, knn = cfg.evaluate.linear, cfg.evaluate.knn
    fit = probe_indices(len(train), val, lin.max_train_images, cfg.seed)
    fit, val = within_budget(fit, val, int(model.encoder.feature_dim), lin.max_elements, cfg.seed)
    rows = np.union1d(fit, val)
    h = batched_forward(model.encoder, train, rows, runtime, cfg.evaluate.batch_size, channels,
                        height)
    at_fit, at_val = np.searchsorted(rows, fit), np.searchsorted(rows, val)
    classes = len(dataset.classes)
    fit_y, val_y = train.labels[fit], train.labels[val]
    representations = {"": h}
    if with_z:
        representations["_z"] = h if cfg.model.head_layers == 0 else project(model.head, h, runtime)
    metrics: dict[str, float] = {"images_probe_fit": float(len(fit)),
                                 "images_probe_val": float(len(val))}
    for suffix, x in representations.items():
        l2, scores = validation_probe(x[at_fit], fit_y, x[at_val], val_y, classes, lin.l2_grid,
                                      lin.epochs)
        metrics[f"linear{suffix}_val_top1"] = scores[l2]
        metrics[f"l2_linear{suffix}"] = l2
        metrics[f"knn{suffix}_val_top1"] = knn_top1(x[at_fit], fit_y, x[at_val], val_y, k=knn.k,
                                                    temperature=knn.temperature,
                                                    num_classes=classes)
    return metrics


__all__ = ["probe_trial", "project"]
