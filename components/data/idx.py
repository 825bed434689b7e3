"""MNIST-style IDX files (``train-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``, ...).

Format (big-endian): two zero bytes, a type byte (0x08 = uint8), the number of dimensions,
one uint32 per dimension, then the data. Images are ``(N, H, W)``, labels ``(N,)``. Files
may be gzip-compressed (recognised by content, not by name). Images are streamed in
batches so that a large file never has to fit in memory twice.
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from components.config import SourceConfig
from components.data.source_data import Batch, Progress, SourceData, class_names
from components.data.split import stratified_split
from components.errors import DataError

log = logging.getLogger(__name__)

UINT8 = 0x08
SPLIT_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}
BATCH = 8192  # images per streamed batch (fewer for large images, see BATCH_BYTES)
BATCH_BYTES = 64 << 20
CHUNK = 16 << 20


def _open(path: Path) -> BinaryIO:
    with path.open("rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else path.open("rb")  # type: ignore[return-value]


def _read_exact(stream: BinaryIO, n: int, path: Path) -> bytes:
    # read in bounded chunks: a corrupt header may claim terabytes, which must end in
    # "truncated", not in one giant allocation
    parts, got = [], 0
    try:
        while got < n:
            data = stream.read(min(CHUNK, n - got))
            if not data:
                break
            parts.append(data)
            got += len(data)
    except (EOFError, OSError, zlib.error) as err:
        raise DataError(f"{path}: truncated or corrupt ({err})") from err
    if got != n:
        raise DataError(f"{path}: truncated (expected {n} more bytes, got {got})")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_header(stream: BinaryIO, path: Path, ndim: int) -> tuple[int, ...]:
    """Validate the magic number of an open IDX stream and return its dimensions."""
    magic = _read_exact(stream, 4, path)
    if magic[0] != 0 or magic[1] != 0:
        raise DataError(f"{path}: not an IDX file (magic {magic.hex()})")
    if magic[2] != UINT8:
        raise DataError(f"{path}: IDX data type 0x{magic[2]:02x} is not uint8 (0x08)")
    if magic[3] != ndim:
        raise DataError(f"{path}: IDX file has {magic[3]} dimensions, expected {ndim}")
    dims = struct.unpack(f">{ndim}I", _read_exact(stream, 4 * ndim, path))
    return tuple(int(d) for d in dims)


def _check_end(stream: BinaryIO, path: Path) -> None:
    try:
        extra = stream.read(1)
    except (EOFError, OSError, zlib.error) as err:
        raise DataError(f"{path}: truncated or corrupt ({err})") from err
    if extra:
        raise DataError(f"{path}: longer than its IDX header says")


def read_labels(path: Path) -> np.ndarray:
    """int64 (N,) labels of an ``idx1`` file."""
    with _open(path) as stream:
        (count,) = read_header(stream, path, ndim=1)
        labels = np.frombuffer(_read_exact(stream, count, path), dtype=np.uint8)
        _check_end(stream, path)
    return labels.astype(np.int64)


def image_count(path: Path) -> tuple[int, int, int]:
    """(N, H, W) from the header of an ``idx3`` file."""
    with _open(path) as stream:
        return read_header(stream, path, ndim=3)  # type: ignore[return-value]


def iter_images(path: Path, batch: int = BATCH) -> Iterator[np.ndarray]:
    """uint8 (n, H, W, 1) batches of an ``idx3`` file, in file order."""
    with _open(path) as stream:
        count, height, width = read_header(stream, path, ndim=3)
        if height == 0 or width == 0:
            raise DataError(f"{path}: IDX images have size {height}x{width}")
        batch = max(1, min(batch, BATCH_BYTES // (height * width)))
        for start in range(0, count, batch):
            n = min(batch, count - start)
            raw = _read_exact(stream, n * height * width, path)
            yield np.frombuffer(raw, dtype=np.uint8).reshape(n, height, width, 1)
        _check_end(stream, path)


def _find(folder: Path, prefix: str, kind: str) -> Path | None:
    for sep in ("-", "."):
        for suffix in ("", ".gz"):
            candidate = folder / f"{prefix}-{kind}{sep}{'idx3' if kind == 'images' else 'idx1'}-ubyte{suffix}"
            if candidate.is_file():
                return candidate
    return None


def find_files(folder: Path) -> dict[str, tuple[Path, Path]]:
    """{split: (images, labels)} for the IDX pairs in ``folder`` (train needed, test optional)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    found: dict[str, tuple[Path, Path]] = {}
    for split, prefixes in SPLIT_PREFIXES.items():
        for prefix in prefixes:
            images, labels = _find(folder, prefix, "images"), _find(folder, prefix, "labels")
            if images is None and labels is None:
                continue
            if images is None or labels is None:
                have = images or labels
                raise DataError(f"{have}: its {'labels' if labels is None else 'images'} file "
                                f"is missing in {folder}")
            found[split] = (images, labels)
            break
    if "train" not in found:
        raise DataError(f"{folder}: no IDX files (expected train-images-idx3-ubyte[.gz] and "
                        f"train-labels-idx1-ubyte[.gz], optionally t10k-*)")
    return found


def open_idx(folder: Path, cfg: SourceConfig, split_seed: int) -> SourceData:
    """Read an IDX folder; without t10k files the train files are split (seeded, stratified)."""
    files = find_files(folder)
    labels: dict[str, np.ndarray] = {}
    for split, (images_path, labels_path) in files.items():
        labels[split] = read_labels(labels_path)
        count = image_count(images_path)[0]
        if count != len(labels[split]):
            raise DataError(f"{images_path}: {count} images but {labels_path.name} has "
                            f"{len(labels[split])} labels")
    max_label = max(int(lab.max()) if lab.size else -1 for lab in labels.values())
    classes = class_names(cfg, None, max_label, str(files["train"][1]))
    seeded = "test" not in files
    is_test = stratified_split(labels["train"], cfg.test_fraction, split_seed) if seeded else None

    def batches() -> Iterator[Batch]:
        for split, (images_path, _) in files.items():
            progress = Progress(str(images_path), len(labels[split]))
            start = 0
            for images in iter_images(images_path):
                batch_labels = labels[split][start:start + len(images)]
                if is_test is None:
                    yield split, images, batch_labels
                else:
                    mask = is_test[start:start + len(images)]
                    yield "train", images[~mask], batch_labels[~mask]
                    yield "test", images[mask], batch_labels[mask]
                start += len(images)
                progress.update(len(images))

    info = {"files": {split: [p.name for p in pair] for split, pair in files.items()},
            "split": "stratified" if seeded else "source"}
    return SourceData(classes, batches(), info)
