"""The evaluation splits as the stages see them: validation for choosing, test for scoring once.

- :class:`SplitView`: rows ``indices`` of a split (the versioned validation split, or the
  training images outside it), with ``images()``, ``labels`` and ``len`` like an ImageSplit.
- :class:`HeldOutTest`: the test split with its labels sealed. ``images()`` and ``len`` work
  (scoring needs them); reading ``labels`` raises :class:`SealedLabelsError`. The only way to
  the labels is :meth:`HeldOutTest.final_labels`, called by a stage once its final model is
  fixed. A chooser handed the test split (as its validation split) therefore fails.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from components.data.store import CanonicalDataset, ImageSplit


class SealedLabelsError(RuntimeError):
    """Code read test labels before the final scoring call: a choice may have seen the test split."""


class SplitView:
    """Rows ``indices`` (sorted int64) of ``split``; ``images(i)`` reads rows ``indices[i]``."""

    def __init__(self, split: ImageSplit, indices: np.ndarray):
        self.split = split
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return self.split.labels[self.indices]

    def images(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        rows = self.indices if indices is None else self.indices[np.asarray(indices, np.int64)]
        return self.split.images(rows)


class HeldOutTest:
    """The test split of a data set, labels sealed until :meth:`final_labels` (see module)."""

    def __init__(self, dataset: CanonicalDataset, name: str = "test"):
        self._split = dataset.split(name)
        self.label_reads = 0

    def __len__(self) -> int:
        return len(self._split)

    def images(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        return self._split.images(indices)

    @property
    def labels(self) -> np.ndarray:
        raise SealedLabelsError("test labels are read only by the final scoring call "
                               "(HeldOutTest.final_labels); anything that chooses reads the "
                               "validation split")

    def final_labels(self) -> np.ndarray:
        """(N,) int64 test labels, for scoring the final model (after every choice is made)."""
        self.label_reads += 1
        return self._split.labels


def probe_indices(train_size: int, val: np.ndarray, max_train_images: int | None,
                  seed: int) -> np.ndarray:
    """Sorted train-split indices a frozen probe fits on: the split minus ``val``, subsampled
    to ``max_train_images`` (seeded) when set."""
    from components.data.subsets import without
    from components.evaluation.inputs import subsample

    fit = without(train_size, val)
    chosen = subsample(len(fit), max_train_images, seed)
    return fit if chosen is None else fit[chosen]


def train_val_features(cache, encoder, digest: str, dataset: CanonicalDataset, fit: np.ndarray,
                       val: np.ndarray, **common) -> tuple[np.ndarray, np.ndarray]:
    """Cached features (fit rows, val rows) of the training split, encoded in one pass over
    their union (``indices=None`` when that is the whole split, so the entry is shared)."""
    union = np.union1d(fit, val)
    whole = len(union) == len(dataset.split("train"))
    features = cache.features(encoder, digest, dataset, "train",
                              indices=None if whole else union, **common)
    return features[np.searchsorted(union, fit)], features[np.searchsorted(union, val)]


def within_budget(fit: np.ndarray, val: np.ndarray, dim: int, max_elements: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, val) row indices whose in-memory probe matrix, ``(len(fit) + len(val)) x dim``
    float32, stays within ``max_elements``: unchanged when it fits, else seeded sorted
    subsamples (validation keeps at most half of the budget)."""
    from components.evaluation.inputs import subsample

    rows = max(max_elements // max(dim, 1), 2)
    if len(fit) + len(val) <= rows:
        return fit, val
    val_rows = min(len(val), rows // 2)
    chosen_val = subsample(len(val), val_rows, seed + 1)
    chosen_fit = subsample(len(fit), rows - val_rows, seed)
    return (fit if chosen_fit is None else fit[chosen_fit],
            val if chosen_val is None else val[chosen_val])


class PixelRows:
    """Raw pixels of a rows source as probe features: ``rows[a:b]`` -> float32 (k, H*W*C) in
    [0, 1] (HWC order), read on demand, so the pixel baseline never holds a split as float."""

    def __init__(self, source, indices: np.ndarray | None = None):  # noqa: ANN001 - rows source
        self.source = source
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, rows: slice) -> np.ndarray:
        images = self.source.images(self.indices[rows])
        return images.reshape(len(images), -1).astype(np.float32) / 255.0

    def array(self) -> np.ndarray:
        """All rows as one float32 array (for the bounded fit / validation matrices)."""
        return self[:]
