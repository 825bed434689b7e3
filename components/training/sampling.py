"""Data order of a pretraining run: pure functions of (seed, epoch, step, rank).

The training images are the split's first ``max_images`` rows, or a seeded sample of that
many (:func:`training_subset`). The global batch order of epoch ``e`` is a permutation seeded
by ``(seed, e)``; rank ``r`` of ``world`` takes rows ``[r b, (r + 1) b)`` of each global batch
of ``B = world b`` images (the last partial batch is dropped, so every rank has equal shapes). The augmentation generator of
a step is seeded by ``(seed, step, rank)``. A resumed run therefore sees the same images and
views, and the global batches do not depend on the number of workers.
"""

from __future__ import annotations

import numpy as np
import torch


def training_subset(seed: int | None, count: int | None, available: int) -> np.ndarray | None:
    """Rows of the training split a run trains on, or None for its first ``count`` (all when
    ``count`` is None): with a ``seed`` and a ``count`` below ``available``, a sorted int64
    sample (count,) of row indices, a pure function of (seed, count, available). Epoch ``e``'s
    permutation then orders these rows (``pretrain.subset_seed``)."""
    if seed is None or count is None or count >= available:
        return None
    rng = np.random.default_rng([seed, available])
    return np.sort(rng.choice(available, size=count, replace=False)).astype(np.int64)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The global image order of one epoch: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def local_batch_indices(perm: np.ndarray, step_in_epoch: int, batch_size: int,
                        rank: int, world: int) -> np.ndarray:
    """Rank ``rank``'s rows of global batch ``step_in_epoch`` (equal shapes on every rank)."""
    per_rank = batch_size // world
    start = step_in_epoch * batch_size + rank * per_rank
    return perm[start:start + per_rank]


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The augmentation stream of one step on one rank (so a resumed run draws the same views).

    A CPU generator: SimCLRAugment draws the per-image parameters on the CPU (a few numbers per
    image) and applies them on the images' device.
    """
    mixed = int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(mixed & ((1 << 63) - 1))


def stratified_sample(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Sorted indices of about ``count`` rows with every class in proportion (seeded).

    Uses the data splitter's per-class rounding (``components.data.split``), so a class of at
    least two images is always represented; all rows when ``count >= len(labels)``.
    """
    from components.data.split import stratified_split

    labels = np.asarray(labels)
    if count >= len(labels):
        return np.arange(len(labels))
    return np.flatnonzero(stratified_split(labels, count / len(labels), seed))
