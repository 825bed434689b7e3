"""scikit-learn's bundled digits: 1,797 grey 8x8 images, values 0..16, no split."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from components.config import SourceConfig
from components.data.source_data import Batch, SourceData, class_names
from components.data.split import stratified_split


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """uint8 (1797, 8, 8, 1) scaled 0..16 -> 0..255 (rounded), int64 labels (1797,)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images[..., None], bunch.target.astype(np.int64)


def open_digits(cfg: SourceConfig, split_seed: int) -> SourceData:
    """Digits with a seeded, stratified ``cfg.test_fraction`` test split."""
    images, labels = digits_arrays()
    classes = class_names(cfg, None, int(labels.max()), "sklearn digits")
    is_test = stratified_split(labels, cfg.test_fraction, split_seed)

    def batches() -> Iterator[Batch]:
        yield "train", images[~is_test], labels[~is_test]
        yield "test", images[is_test], labels[is_test]

    return SourceData(classes, batches(), {"split": "stratified"})
