"""The canonical data set: sharded, memory-mappable uint8 images plus labels and a manifest.

Layout of one data set folder::

    manifest.json                 name, source, classes, image shape, per-split counts, content hash
    <split>/images-00000.npy      uint8 (n, H, W, C), at most ``shard_size`` images per shard
    <split>/labels.npy            int64 (N,)

Shards are opened with ``np.load(mmap_mode="r")`` so a data set larger than RAM reads only
the images a worker asks for. Writing goes to a temporary sibling folder that replaces the
old one only when complete, so a failed ingest leaves the previous good data set untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.errors import DataError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class SplitInfo:
    count: int
    counts_per_class: list[int]
    shards: list[str]


class ImageSplit:
    """One split of a canonical data set, read lazily from memory-mapped shards."""

    def __init__(self, folder: Path, info: SplitInfo, image_shape: tuple[int, int, int]):
        self.folder = folder
        self.info = info
        self.image_shape = image_shape
        self._shards = [np.load(folder / name, mmap_mode="r") for name in info.shards]
        self._offsets = np.cumsum([0] + [len(shard) for shard in self._shards])
        self.labels: np.ndarray = np.load(folder / "labels.npy")
        if len(self.labels) != info.count or self._offsets[-1] != info.count:
            raise DataError(f"{folder}: {info.count} images in the manifest, "
                            f"{self._offsets[-1]} in shards, {len(self.labels)} labels")

    def __len__(self) -> int:
        return self.info.count

    def images(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """uint8 (k, H, W, C) for the given indices (all images when None), in that order."""
        if indices is None:
            return np.concatenate([np.asarray(shard) for shard in self._shards]) if self._shards \
                else np.empty((0, *self.image_shape), np.uint8)
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"index out of range for split of {len(self)} images")
        out = np.empty((len(indices), *self.image_shape), dtype=np.uint8)
        shard_of = np.searchsorted(self._offsets, indices, side="right") - 1
        for shard_id in np.unique(shard_of):
            rows = np.nonzero(shard_of == shard_id)[0]
            local = indices[rows] - self._offsets[shard_id]
            order = np.argsort(local)  # sorted reads are kinder to the page cache
            out[rows[order]] = self._shards[shard_id][local[order]]
        return out

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Sequential (images, labels) batches over the whole split."""
        for start in range(0, len(self), batch_size):
            idx = np.arange(start, min(start + batch_size, len(self)))
            yield self.images(idx), self.labels[idx]


class CanonicalDataset:
    """A data set folder written by :class:`DatasetWriter`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest_path = self.root / MANIFEST
        if not manifest_path.is_file():
            raise DataError(f"{manifest_path}: no canonical data set here (run the ingest stage)")
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{manifest_path}: corrupt manifest ({err})") from err
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{manifest_path}: unsupported format_version "
                            f"{self.manifest.get('format_version')}")
        self._splits: dict[str, ImageSplit] = {}

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["image_shape"])  # type: ignore[return-value]

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    @property
    def split_names(self) -> list[str]:
        return list(self.manifest["splits"])

    def split(self, name: str) -> ImageSplit:
        if name not in self.manifest["splits"]:
            raise DataError(f"{self.root}: no split {name!r} (have {self.split_names})")
        if name not in self._splits:
            info = SplitInfo(**self.manifest["splits"][name])
            self._splits[name] = ImageSplit(self.root / name, info, self.image_shape)
        return self._splits[name]


class DatasetWriter:
    """Streams images into a new canonical data set and swaps it in atomically on commit.

    >>> with DatasetWriter("data/fmnist", "fashion-mnist", classes, shard_size=10_000) as w:
    ...     w.add("train", images, labels)     # may be called many times per split
    ...     w.commit(source={"kind": "idx", "path": "..."})
    """

    def __init__(self, root: str | Path, name: str, classes: Sequence[str], shard_size: int):
        self.root = Path(root)
        self.name = name
        self.classes = list(classes)
        self.shard_size = shard_size
        self.tmp = self.root.parent / f".{self.root.name}.tmp-{uuid.uuid4().hex[:8]}"
        self._image_shape: tuple[int, int, int] | None = None
        self._pending: dict[str, list[np.ndarray]] = {}
        self._pending_len: dict[str, int] = {}
        self._shards: dict[str, list[str]] = {}
        self._labels: dict[str, list[np.ndarray]] = {}
        self._committed = False

    def __enter__(self) -> DatasetWriter:
        self.tmp.mkdir(parents=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._committed:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def add(self, split: str, images: np.ndarray, labels: np.ndarray) -> None:
        """images: uint8 (n, H, W, C); labels: integer (n,) in [0, len(classes))."""
        if images.dtype != np.uint8 or images.ndim != 4:
            raise DataError(f"split {split!r}: images must be uint8 (n, H, W, C), "
                            f"got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise DataError(f"split {split!r}: {len(images)} images but {len(labels)} labels")
        shape = tuple(images.shape[1:])
        if self._image_shape is None:
            self._image_shape = shape  # type: ignore[assignment]
        elif shape != self._image_shape:
            raise DataError(f"split {split!r}: image shape {shape} differs from {self._image_shape}")
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise DataError(f"split {split!r}: labels outside [0, {len(self.classes)}) "
                            f"for {len(self.classes)} classes")
        if not len(images):  # an empty batch must not create a split without shards
            return
        self._labels.setdefault(split, []).append(labels)
        self._pending.setdefault(split, []).append(images)
        self._pending_len[split] = self._pending_len.get(split, 0) + len(images)
        while self._pending_len[split] >= self.shard_size:
            self._flush(split, self.shard_size)

    def _flush(self, split: str, count: int) -> None:
        block = np.concatenate(self._pending[split])
        shard, rest = block[:count], block[count:]
        self._pending[split] = [rest] if len(rest) else []
        self._pending_len[split] = len(rest)
        names = self._shards.setdefault(split, [])
        name = f"images-{len(names):05d}.npy"
        (self.tmp / split).mkdir(exist_ok=True)
        np.save(self.tmp / split / name, np.ascontiguousarray(shard))
        names.append(name)

    def commit(self, source: dict[str, Any]) -> CanonicalDataset:
        if self._image_shape is None:
            raise DataError(f"{self.name}: no images were read from the source")
        splits: dict[str, Any] = {}
        digest = hashlib.sha256()
        digest.update(json.dumps({"classes": self.classes, "shape": self._image_shape}).encode())
        for split in sorted(self._labels):
            if self._pending_len.get(split):
                self._flush(split, self._pending_len[split])
            labels = np.concatenate(self._labels[split])
            np.save(self.tmp / split / "labels.npy", labels)
            digest.update(split.encode())
            for name in self._shards[split]:
                # hash the mapped shard in place: .tobytes() would copy a whole shard into RAM
                digest.update(np.load(self.tmp / split / name, mmap_mode="r"))
            digest.update(labels.tobytes())
            splits[split] = {
                "count": int(len(labels)),
                "counts_per_class": np.bincount(labels, minlength=len(self.classes)).tolist(),
                "shards": self._shards[split],
            }
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "source": source,
            "classes": self.classes,
            "image_shape": list(self._image_shape),
            "splits": splits,
            "content_hash": digest.hexdigest(),
        }
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        replace_dir(self.tmp, self.root)
        self._committed = True
        return CanonicalDataset(self.root)


def replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` in at ``target``; the old folder is removed only after the rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def remove_others(folder: Path, keep: set[str]) -> list[str]:
    """Delete every entry of ``folder`` not named in ``keep`` (data sets of an earlier config,
    leftovers of a killed write); returns the names removed.

    A DVC output marked ``persist`` is not emptied before its stage runs, so the stage itself
    removes what the current config no longer writes.
    """
    removed = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        if entry.name not in keep:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry.name)
    return removed
