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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.data.store import CanonicalDataset
from components.errors import DataError
from components.evaluation.device import CPU, EvalRuntime
from components.io import indices_sha256

log = logging.getLogger(__name__)

LUMINANCE = (0.299, 0.587, 0.114)
CACHE_FORMAT = "features/1"
MEMMAP_ABOVE_BYTES = 256 << 20  # cache entries larger than this stay on disk, memory-mapped


def adapt_images(images: np.ndarray | torch.Tensor, in_channels: int, image_size: int) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, in_channels, image_size, image_size) in [0, 1], on the
    images' device (a batch: callers stream, they never adapt a whole split)."""
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
def batched_forward(
    model: nn.Module,
    rows: Any,
    indices: np.ndarray | None,
    runtime: EvalRuntime = CPU,
    batch_size: int = 512,
    in_channels: int | None = None,
    image_size: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``model``'s output, float32 (k, D), on rows ``indices`` of ``rows`` (all when None).

    The one batched inference loop (features, logits, the pretraining monitor). ``rows``: any
    rows source (:mod:`components.evaluation.batches`), streamed batch by batch to
    ``runtime.device`` (where ``model`` must already be) and adapted there
    (:func:`adapt_images`; ``in_channels`` / ``image_size`` None: keep the images' own).
    ``out`` (e.g. an ``np.lib.format.open_memmap``) receives the rows instead of a new array.
    The model runs in eval mode without gradients, under bf16 autocast when
    ``runtime.bf16``; its previous mode is restored.
    """
    from components.evaluation.batches import index_batches, stream

    indices = np.arange(len(rows)) if indices is None else np.asarray(indices, dtype=np.int64)
    was_training = model.training
    model.eval()
    start = 0
    try:
        for images in stream(rows, index_batches(indices, batch_size), runtime.device):
            channels = in_channels or images.shape[-1]
            size = image_size or images.shape[1]
            with runtime.autocast():
                result = model(runtime.layout(adapt_images(images, channels, size)))
            result = result.float().cpu().numpy()
            if out is None:
                out = np.empty((len(indices), *result.shape[1:]), np.float32)
            out[start:start + len(result)] = result
            start += len(result)
    finally:
        model.train(was_training)
    if out is None:
        return np.empty((0, int(getattr(model, "feature_dim", 0))), np.float32)
    return out


def encode(encoder: nn.Module, split: Any, indices: np.ndarray | None, in_channels: int,
           image_size: int, batch_size: int = 512) -> np.ndarray:
    """:func:`batched_forward` on the CPU in float32 (kept for scripts such as bench/)."""
    return batched_forward(encoder, split, indices, CPU, batch_size, in_channels, image_size)


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
        runtime: EvalRuntime = CPU,
    ) -> np.ndarray:
        """Cached :func:`batched_forward` of one split of ``dataset`` (all images when indices
        is None), float32 (k, D); ``encoder`` on ``runtime.device``. An entry larger than
        ``MEMMAP_ABOVE_BYTES`` is written straight to disk and returned memory-mapped
        (read-only), so a large split's features never sit in RAM as one array."""
        path = self.root / f"{self.key(encoder_digest, dataset, split, indices)}.npy"
        if path.is_file():
            try:
                large = path.stat().st_size > MEMMAP_ABOVE_BYTES
                cached = np.load(path, mmap_mode="r" if large else None)
                self.stats["hits"] += 1
                log.info("features: cache hit %s (%s/%s, %d x %d)", path.name, dataset.name,
                         split, *cached.shape)
                return cached
            except (OSError, ValueError):
                log.warning("features: unreadable cache entry %s; recomputing", path)
        self.stats["misses"] += 1
        image_split = dataset.split(split)
        count = len(image_split) if indices is None else len(indices)
        log.info("features: encoding %d images of %s/%s on %s", count, dataset.name, split,
                 runtime.device)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.npy")
        dim = getattr(encoder, "feature_dim", None)
        large = dim is not None and count * int(dim) * 4 > MEMMAP_ABOVE_BYTES
        out = np.lib.format.open_memmap(tmp, "w+", np.float32, (count, int(dim))) if large else None
        features = batched_forward(encoder, image_split, indices, runtime, batch_size,
                                   in_channels, image_size, out=out)
        self.stats["images_encoded"] += count
        if large:
            features.flush()
            del features, out
        else:
            np.save(tmp, features)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        return np.load(path, mmap_mode="r") if large else features
