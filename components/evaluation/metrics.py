"""Classification metrics on score matrices: top-k accuracy, per-class accuracy, confusion matrix.

Scores are (N, C) logits or probabilities; labels are int (N,). Ties in top-k are broken by the
stable order of ``argsort`` on the negated scores (lower class index first), as scikit-learn does.
"""

from __future__ import annotations

import numpy as np


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose true label is among the ``k`` highest scores. scores (N, C)."""
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.ndim != 2 or len(scores) != len(labels):
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} do not match")
    if len(labels) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def confusion(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 (C, C): row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return matrix


def per_class_accuracy(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """float (C,): recall of each class; NaN for a class absent from ``labels``."""
    matrix = confusion(labels, predictions, num_classes)
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / np.maximum(totals, 1), np.nan)


def classification_metrics(scores: np.ndarray, labels: np.ndarray, prefix: str) -> dict[str, float]:
    """``{prefix_top1, prefix_top5}`` as fractions in [0, 1]."""
    return {
        f"{prefix}_top1": topk_accuracy(scores, labels, 1),
        f"{prefix}_top5": topk_accuracy(scores, labels, 5),
    }
