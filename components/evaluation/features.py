"""Frozen-encoder features: input adaptation, batched extraction and an on-disk feature cache.

Input adaptation (any canonical data set -> the encoder's input): uint8 (N, H, W, C) ->
float (N, C', S, S) in [0, 1] with RGB -> grey by ITU-R 601 luminance, grey -> RGB by repeat,
and a bilinear resize to the encoder's ``image_size`` (antialiased when shrinking).

Cache. Features of one (encoder, data set, split[, index subset]) are stored once under
``cfg.evaluate.cache_dir`` (outside DVC outs, which DVC deletes before a stage runs) as
``<key>.npy`` with ``key = sha256(encoder digest | data set content hash | split | indices)``.
The encoder digest is the SHA-256 of the checkpoint file's bytes, or of the state dict for an
in-memory (random-init) encoder. A changed encoder or data set therefore never hits a stale entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.data.store import CanonicalDataset, ImageSplit
from components.errors import DataError
from components.io import indices_sha256

log = logging.getLogger(__name__)

LUMINANCE = (0.299, 0.587, 0.114)
CACHE_FORMAT = "features/1"


def adapt_images(images: np.ndarray, in_channels: int, image_size: int) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, in_channels, image_size, image_size) in [0, 1]."""
    from components.augment import to_float_tensor

    x = to_float_tensor(images)
    channels = x.shape[1]
    if channels != in_channels:
        if channels == 3 and in_channels == 1:
            weights = torch.tensor(LUMINANCE, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x * weights).sum(dim=1, keepdim=True)
        elif channels == 1 and in_channels == 3:
            x = x.repeat(1, 3, 1, 1)
        else:
            raise DataError(f"cannot adapt {channels}-channel images to a "
                            f"{in_channels}-channel encoder")
    if x.shape[-2:] != (image_size, image_size):
        shrink = x.shape[-2] > image_size or x.shape[-1] > image_size
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear",
                          align_corners=False, antialias=shrink).clamp_(0.0, 1.0)
    return x.contiguous()


@torch.no_grad()
def encode(
    encoder: nn.Module,
    split: ImageSplit,
    indices: np.ndarray | None,
    in_channels: int,
    image_size: int,
    batch_size: int = 512,
) -> np.ndarray:
    """Representation h, float32 (k, feature_dim), of the split's images (all when indices is None).

    Any module works (a classifier gives logits (k, C)): the one batched-inference loop. The
    module runs in eval mode without gradients; its previous mode is restored.
    """
    indices = np.arange(len(split)) if indices is None else np.asarray(indices, dtype=np.int64)
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    try:
        for start in range(0, len(indices), batch_size):
            batch = adapt_images(split.images(indices[start:start + batch_size]),
                                 in_channels, image_size).to(device)
            out.append(encoder(batch).float().cpu())
    finally:
        encoder.train(was_training)
    if not out:
        return np.empty((0, int(getattr(encoder, "feature_dim", 0))), np.float32)
    return torch.cat(out).numpy()


def module_digest(module: nn.Module, extra: dict | None = None) -> str:
    """SHA-256 of a module's state dict (names, shapes, bytes) plus ``extra`` (e.g. its config)."""
    digest = hashlib.sha256(json.dumps(extra or {}, sort_keys=True).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Features per (encoder digest, data set, split, indices) as ``.npy`` files under ``root``.

    ``stats`` counts ``hits``, ``misses`` and ``images_encoded`` (forward work done).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.stats = {"hits": 0, "misses": 0, "images_encoded": 0}

    @staticmethod
    def key(encoder_digest: str, dataset: CanonicalDataset, split: str,
            indices: Sequence[int] | np.ndarray | None = None) -> str:
        parts = [CACHE_FORMAT, encoder_digest, dataset.content_hash, split]
        if indices is not None:
            parts.append(indices_sha256(np.asarray(indices)))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

    def features(
        self,
        encoder: nn.Module,
        encoder_digest: str,
        dataset: CanonicalDataset,
        split: str,
        in_channels: int,
        image_size: int,
        indices: np.ndarray | None = None,
        batch_size: int = 512,
    ) -> np.ndarray:
        """Cached ``encode(...)`` of one split of ``dataset`` (all images when indices is None)."""
        path = self.root / f"{self.key(encoder_digest, dataset, split, indices)}.npy"
        if path.is_file():
            try:
                cached = np.load(path)
                self.stats["hits"] += 1
                log.info("features: cache hit %s (%s/%s, %d x %d)", path.name, dataset.name,
                         split, *cached.shape)
                return cached
            except (OSError, ValueError):
                log.warning("features: unreadable cache entry %s; recomputing", path)
        self.stats["misses"] += 1
        image_split = dataset.split(split)
        count = len(image_split) if indices is None else len(indices)
        log.info("features: encoding %d images of %s/%s", count, dataset.name, split)
        features = encode(encoder, image_split, indices, in_channels, image_size, batch_size)
        self.stats["images_encoded"] += count
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.npy")
        np.save(tmp, features)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        return features
