"""Write small files in the source formats (IDX, CIFAR batches, image folders) for tests."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array (magic 0x0000 08 <ndim>, big-endian dims, data)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray,
              gz: bool = True) -> tuple[Path, Path]:
    """``<prefix>-images-idx3-ubyte[.gz]`` (N, H, W) and ``<prefix>-labels-idx1-ubyte[.gz]``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
        path = folder / f"{prefix}-{kind}-ubyte{'.gz' if gz else ''}"
        data = idx_bytes(array.astype(np.uint8))
        path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
        paths.append(path)
    return paths[0], paths[1]


def random_idx_folder(folder: Path, n_train: int = 40, n_test: int = 20, size: int = 6,
                      classes: int = 4, seed: int = 0, gz: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        if n:
            images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
            write_idx(folder, prefix, images, np.arange(n) % classes, gz=gz)
    return folder


def write_cifar10(folder: Path, per_batch: int = 6, batches: int = 2, seed: int = 0,
                  names: list[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 layout; returns {file name: (images HWC uint8, labels)} as written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    files = [f"data_batch_{i}" for i in range(1, batches + 1)] + ["test_batch"]
    for name in files:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        with (folder / name).open("wb") as handle:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * per_batch}, handle, protocol=2)
        written[name] = (data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.array(labels))
    names = names or ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                      "ship", "truck"]
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump({b"label_names": [n.encode() for n in names], b"num_vis": 3072}, handle)
    return written


def write_cifar100(folder: Path, n: int = 8, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in ("train", "test"):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(x) for x in rng.integers(0, 100, n)]
        with (folder / name).open("wb") as handle:
            pickle.dump({b"data": data, b"fine_labels": fine, b"coarse_labels": [0] * n}, handle)
        written[name] = (data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.array(fine))
    with (folder / "meta").open("wb") as handle:
        pickle.dump({b"fine_label_names": [f"c{i:02d}".encode() for i in range(100)],
                     b"coarse_label_names": [b"x"] * 20}, handle)
    return written


def write_image(path: Path, size: tuple[int, int], mode: str = "RGB", value: int = 128) -> Path:
    """A flat image of ``size`` (width, height) in ``mode``; extension picks the format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if mode == "L" else (value, 255 - value, value // 2)
    Image.new(mode, size, colour).save(path)
    return path


def image_folder(root: Path, per_class: dict[str, int], size: tuple[int, int] = (10, 8),
                 mode: str = "L", ext: str = ".png") -> Path:
    """``root/<class>/<i>.png`` with a distinct grey value per image."""
    for ci, (name, count) in enumerate(per_class.items()):
        for i in range(count):
            write_image(root / name / f"{i:03d}{ext}", size, mode, value=(ci * 40 + i) % 256)
    return root
