"""Weighted cosine k-nearest-neighbour classifier (Wu et al. 2018, InstDisc; used by SimCLR
follow-ups as a cheap, hyper-parameter-light monitor of representation quality).

Each test feature votes with its ``k`` most cosine-similar training features; neighbour ``j``
adds ``exp(s_j / temperature)`` to its class. Computed in chunks of test rows so memory stays
``chunk x N_train`` (the test features may be memory-mapped: only a chunk is read at a time).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _as_tensor(x: np.ndarray | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=dtype)


@torch.no_grad()
def knn_scores(
    train_features: np.ndarray | torch.Tensor,
    train_labels: np.ndarray | torch.Tensor,
    test_features: np.ndarray | torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores (N_test, C) of the weighted kNN vote. features (N, D), labels int (N,)."""
    bank = F.normalize(_as_tensor(train_features, torch.float32), dim=1)
    bank_labels = _as_tensor(train_labels, torch.int64)
    if len(bank) == 0:
        raise ValueError("kNN needs at least one training feature")
    classes = int(num_classes if num_classes is not None else int(bank_labels.max()) + 1)
    k = min(k, len(bank))
    out = torch.zeros(len(test_features), classes)
    for start in range(0, len(test_features), chunk_size):
        # queries are read and normalised per chunk: a memory-mapped feature file stays on disk
        chunk = _as_tensor(test_features[start:start + chunk_size], torch.float32)
        sims = F.normalize(chunk, dim=1) @ bank.T  # (chunk, N_train)
        top_sims, top_idx = sims.topk(k, dim=1)
        weights = (top_sims / temperature).exp()
        out[start:start + chunk_size].scatter_add_(1, bank_labels[top_idx], weights)
    return out


def knn_top1(
    train_features: np.ndarray | torch.Tensor,
    train_labels: np.ndarray | torch.Tensor,
    test_features: np.ndarray | torch.Tensor,
    test_labels: np.ndarray | torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
) -> float:
    """Top-1 accuracy in [0, 1] of the weighted cosine kNN classifier."""
    scores = knn_scores(train_features, train_labels, test_features, k, temperature, num_classes)
    truth = _as_tensor(test_labels, torch.int64)
    return float((scores.argmax(dim=1) == truth).float().mean())
