"""What the evaluation stages read: the pretrained encoder and labelled canonical data sets.

Every problem the user can fix (missing encoder, other architecture, classes that do not
match the labels) raises a :class:`PipelineError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from components.config import ModelConfig
from components.data.store import CanonicalDataset
from components.errors import DataError, PipelineError


def load_pretrained_encoder(path: str | Path, expect: ModelConfig) -> tuple[nn.Module, Any]:
    """(encoder, EncoderSpec) from a ``save_encoder`` checkpoint; frozen-ready, on CPU."""
    from components.models.checkpoint import load_encoder

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: no pretrained encoder (run the pretrain stage first)")
    encoder, spec = load_encoder(path, expect=expect)
    return encoder, spec


def random_encoder(model_cfg: ModelConfig, in_channels: int, image_size: int, seed: int) -> nn.Module:
    """The same architecture, randomly initialised from ``seed`` (global RNG left untouched)."""
    from components.models.encoder import build_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_encoder(model_cfg, in_channels=in_channels, image_size=image_size)


def open_labelled_dataset(root: str | Path, splits: tuple[str, ...] = ("train", "test")) -> CanonicalDataset:
    """A canonical data set whose every split's labels index its class list."""
    dataset = CanonicalDataset(root)
    manifest = Path(root) / "manifest.json"
    classes = dataset.classes
    if len(classes) < 2:
        raise DataError(f"{manifest}: {len(classes)} classes; classification needs at least 2")
    for name in splits:
        split = dataset.split(name)
        labels = split.labels
        if len(labels) == 0:
            raise DataError(f"{manifest}: split {name!r} is empty")
        if labels.min() < 0 or labels.max() >= len(classes):
            raise DataError(f"{manifest}: split {name!r} has labels in [{labels.min()}, "
                            f"{labels.max()}] but only {len(classes)} classes {classes}")
        declared = split.info.counts_per_class
        if len(declared) != len(classes) or np.bincount(labels, minlength=len(classes)).tolist() \
                != list(declared):
            raise DataError(f"{manifest}: split {name!r} counts_per_class {declared} do not match "
                            f"its labels for classes {classes}")
    return dataset


def subsample(count: int, limit: int | None, seed: int) -> np.ndarray | None:
    """Sorted random indices of at most ``limit`` of ``count`` items (None: all of them)."""
    if limit is None or limit >= count:
        return None
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))
