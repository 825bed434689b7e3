"""Seeded, stratified train/test split for sources that come without one."""

from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask (N,), True where an image goes to the test split.

    Per class ``round(test_fraction * n_c)`` images go to test, clipped so that a class with
    at least two images keeps one in each split (a single image stays in train). The same
    labels, fraction and seed always give the same mask.
    """
    labels = np.asarray(labels)
    is_test = np.zeros(len(labels), dtype=bool)
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_test = int(np.floor(test_fraction * len(members) + 0.5))
        n_test = min(max(n_test, 1 if len(members) >= 2 else 0), len(members) - 1)
        is_test[rng.permutation(members)[:n_test]] = True
    return is_test
