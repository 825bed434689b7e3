"""Linear evaluation protocol: multinomial logistic regression on frozen features.

Protocol (documented here, used by the ``linear-eval``, ``baselines`` and ``transfer`` stages):

1. Standardise features with the mean / std of the data the classifier is fitted on.
2. The validation split is the versioned one (``data/subsets/val.txt``, carved from the
   training split by the subsets stage); :func:`fit_linear_probe` carves its own
   (``val_fraction``, seeded, stratified) only for callers without one.
3. For each L2 strength in ``l2_grid``: fit ``softmax(W h + b)`` by full-batch L-BFGS
   (strong-Wolfe line search) on ``mean CE + l2 * ||W||^2`` for at most ``max_iter``
   iterations (to convergence on these sizes) on train minus validation; score top-1 on
   validation (reported as ``<prefix>_val_top1`` for the chosen L2).
4. Choose the L2 with the best validation accuracy (ties: the stronger regularisation).
5. Refit on train + validation with that L2 and report the *final* model's test top-1 / top-5.
   The test split is never used to choose anything: :func:`evaluate_frozen` reads the test
   labels (:class:`~components.evaluation.holdout.HeldOutTest`) only after the refit.

The paper trains the probe with SGD for 90 epochs on augmented crops; on small, fixed feature
matrices full-batch L-BFGS reaches the same convex optimum faster and deterministically.

Device and memory: the L-BFGS solve runs on the CPU on an in-memory (fit + val) x D matrix,
which ``evaluate.linear.max_elements`` bounds (seeded row subsamples above it:
:func:`components.evaluation.holdout.within_budget`); features are extracted on
``evaluate.device``. Test features (possibly memory-mapped) are scored in chunks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from components.config import EvaluateConfig
from components.data.split import stratified_split

log = logging.getLogger(__name__)
SINGLE_THREAD_BELOW = 2_000_000  # feature-matrix elements
SCORE_CHUNK_ELEMENTS = 1 << 23  # features scored at a time (32 MiB; e.g. 10,922 x 768 pixels)


@dataclass
class LinearProbe:
    """A fitted probe: standardisation plus weight (C, D) and bias (C,)."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    l2: float
    val_accuracy: dict[float, float] = field(default_factory=dict)

    @torch.no_grad()
    def scores(self, features: Any, chunk_size: int | None = None) -> np.ndarray:
        """Logits (N, C) for features (N, D): an array, a memory-mapped array or any object
        whose row slices are arrays, read ``chunk_size`` rows at a time (default: as many as
        fit in ``SCORE_CHUNK_ELEMENTS``), so scoring memory does not grow with N."""
        if chunk_size is None:
            chunk_size = max(SCORE_CHUNK_ELEMENTS // max(len(self.mean), 1), 1)
        out = np.empty((len(features), len(self.bias)), np.float32)
        for start in range(0, len(features), chunk_size):
            rows = np.asarray(features[start:start + chunk_size])
            x = (torch.as_tensor(rows, dtype=torch.float32) - self.mean) / self.std
            out[start:start + len(rows)] = (x @ self.weight.T + self.bias).numpy()
        return out


def _standardiser(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False).clamp_min(1e-6)
    return mean, std


def fit_logistic_regression(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int = 100,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight (C, D) and bias (C,) minimising mean cross-entropy + ``l2 * ||W||^2``.

    x: float32 (N, D), already standardised; y: int64 (N,). ``init`` warm-starts from a previous
    solution (the objective is convex: the optimum does not depend on the start).
    """
    if init is None:
        weight = torch.zeros(num_classes, x.shape[1], requires_grad=True)
        bias = torch.zeros(num_classes, requires_grad=True)
    else:
        weight, bias = (t.detach().clone().requires_grad_(True) for t in init)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-5, tolerance_change=1e-8,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    # Small problems are dominated by per-op overhead, which extra threads only add to
    # (16x slower with 2 threads than with 1 on a busy 2-core machine).
    threads = torch.get_num_threads()
    if x.numel() < SINGLE_THREAD_BELOW:
        torch.set_num_threads(1)
    try:
        optimizer.step(closure)
    finally:
        torch.set_num_threads(threads)
    return weight.detach(), bias.detach()


def _validation_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train_idx, val_idx); every class with 2+ examples keeps one in each."""
    is_val = stratified_split(labels, val_fraction, seed)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _tensors(train_features: Any, train_labels: Any, val_features: Any,
             val_labels: Any) -> tuple[torch.Tensor, ...]:
    """float32 features and int64 labels of the fit and validation rows, as tensors."""
    return (torch.as_tensor(np.asarray(train_features), dtype=torch.float32),
            torch.as_tensor(np.asarray(train_labels), dtype=torch.int64),
            torch.as_tensor(np.asarray(val_features), dtype=torch.float32),
            torch.as_tensor(np.asarray(val_labels), dtype=torch.int64))


def _regularisation_path(
    x_tr: torch.Tensor, y_tr: torch.Tensor, x_va: torch.Tensor, y_va: torch.Tensor,
    num_classes: int, l2_grid: list[float], max_iter: int,
) -> tuple[dict[float, float], dict[float, tuple[torch.Tensor, torch.Tensor]]]:
    """Validation top-1 and solution ``(weight, bias)`` of every L2 in the grid, fitted on
    (x_tr, y_tr) standardised by its own mean / std: strongest L2 first, each fit warm-starting
    the next (the optimum of the convex objective does not depend on the start)."""
    grid = sorted({float(v) for v in l2_grid}, reverse=True)  # strongest first: wins ties
    val_accuracy: dict[float, float] = {}
    mean, std = _standardiser(x_tr)
    z_tr, z_va = (x_tr - mean) / std, (x_va - mean) / std
    solutions = {}
    previous = None
    for l2 in grid:
        weight, bias = fit_logistic_regression(z_tr, y_tr, num_classes, l2, max_iter, init=previous)
        previous = solutions[l2] = (weight, bias)
        predictions = (z_va @ weight.T + bias).argmax(dim=1)
        val_accuracy[l2] = float((predictions == y_va).float().mean())
        log.debug("linear probe: l2=%g val_top1=%.4f (%d train / %d val)", l2,
                  val_accuracy[l2], len(z_tr), len(z_va))  # the choice is in the summary line
    return val_accuracy, solutions


def _strongest_best(val_accuracy: dict[float, float]) -> float:
    """The L2 with the best validation top-1; ties go to the stronger regularisation."""
    return max(sorted(val_accuracy, reverse=True), key=lambda l2: val_accuracy[l2])


def validation_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    num_classes: int,
    l2_grid: list[float],
    max_iter: int = 100,
) -> tuple[float, dict[float, float]]:
    """``(chosen L2, {L2: validation top-1})``: steps 1-4 of the protocol without the refit,
    for callers that report on validation only (the studies). Same numbers as
    :func:`choose_linear_probe`'s ``l2`` and ``val_accuracy``. features (N, D), labels int (N,).
    """
    tensors = _tensors(train_features, train_labels, val_features, val_labels)
    val_accuracy, _ = _regularisation_path(*tensors, num_classes, l2_grid, max_iter)
    return _strongest_best(val_accuracy), val_accuracy


def choose_linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    num_classes: int,
    l2_grid: list[float],
    max_iter: int = 100,
) -> LinearProbe:
    """Choose L2 on the validation split, then refit on train + validation.

    features: (N, D) float; labels: int (N,) in [0, num_classes). ``val_accuracy`` holds the
    validation top-1 of every L2 tried (also for a one-value grid).
    """
    x_tr, y_tr, x_va, y_va = _tensors(train_features, train_labels, val_features, val_labels)
    val_accuracy, solutions = _regularisation_path(x_tr, y_tr, x_va, y_va, num_classes, l2_grid,
                                                   max_iter)
    chosen = _strongest_best(val_accuracy)
    x_all, y_all = torch.cat([x_tr, x_va]), torch.cat([y_tr, y_va])
    mean, std = _standardiser(x_all)
    weight, bias = fit_logistic_regression((x_all - mean) / std, y_all, num_classes, chosen,
                                           max_iter, init=solutions[chosen])
    return LinearProbe(mean, std, weight, bias, chosen, val_accuracy)


def fit_linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    l2_grid: list[float],
    val_fraction: float = 0.1,
    max_iter: int = 100,
    seed: int = 0,
) -> LinearProbe:
    """:func:`choose_linear_probe` on a validation split carved from ``features`` (for callers
    without a versioned one); features (N, D), labels int (N,)."""
    features, labels = np.asarray(features), np.asarray(labels)
    tr, va = _validation_split(labels, val_fraction, seed)
    return choose_linear_probe(features[tr], labels[tr], features[va], labels[va], num_classes,
                               l2_grid, max_iter)


@dataclass
class FrozenEvaluation:
    """Linear probe (+ kNN) of one frozen representation on one data set."""

    probe: LinearProbe
    test_scores: np.ndarray  # (N_test, C) probe logits
    metrics: dict[str, float]


def evaluate_frozen(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    test_features: np.ndarray,
    test: Any,
    num_classes: int,
    cfg: EvaluateConfig,
    prefix: str,
    knn_name: str | None = None,
) -> FrozenEvaluation:
    """``{prefix}_val_top1`` (chosen L2, fitted on train) and ``{prefix}_top1/_top5`` (test, the
    final probe refitted on train + val), ``l2_{prefix}``; ``knn_name`` adds kNN top-1 on test
    and ``{knn_name}`` with ``_top1`` -> ``_val_top1`` on validation (bank: train).

    ``test`` holds the test labels: a :class:`~components.evaluation.holdout.HeldOutTest`
    (read once, after the probe is final) or a plain label array.
    """
    from components.evaluation.knn import knn_top1
    from components.evaluation.metrics import classification_metrics

    lin = cfg.linear
    probe = choose_linear_probe(train_features, train_labels, val_features, val_labels,
                                num_classes, lin.l2_grid, lin.epochs)
    metrics = {f"{prefix}_val_top1": probe.val_accuracy[probe.l2], f"l2_{prefix}": probe.l2}
    knn = {"k": cfg.knn.k, "temperature": cfg.knn.temperature, "num_classes": num_classes}
    if knn_name:
        metrics[knn_name.replace("_top1", "_val_top1")] = knn_top1(
            train_features, train_labels, val_features, val_labels, **knn)
    # every choice is made: now, and only now, the test labels
    test_labels = test.final_labels() if hasattr(test, "final_labels") else np.asarray(test)
    scores = probe.scores(test_features)
    metrics.update(classification_metrics(scores, test_labels, prefix))
    if knn_name:
        bank = np.concatenate([train_features, val_features])
        metrics[knn_name] = knn_top1(bank, np.concatenate([train_labels, val_labels]),
                                     test_features, test_labels, **knn)
    log.info("%s: %s", prefix, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return FrozenEvaluation(probe, scores, metrics)
