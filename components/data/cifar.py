"""CIFAR-10 / CIFAR-100 "python version" batch files from a local folder.

CIFAR-10: ``data_batch_1..5``, ``test_batch``, ``batches.meta`` (``label_names``).
CIFAR-100: ``train``, ``test``, ``meta`` (``fine_label_names``); fine labels are used.
Each batch is a pickled dict with ``b"data"`` uint8 (N, 3072) (R, G, B planes of 32x32)
and ``b"labels"`` / ``b"fine_labels"``. The files are unpickled with an allow-list so a
hostile file cannot run code.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from components.config import SourceConfig
from components.data.source_data import Batch, Progress, SourceData, class_names
from components.errors import DataError

SUBFOLDERS = ("cifar-10-batches-py", "cifar-100-python")
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
    ("__builtin__", "object"), ("builtins", "object"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        module = {"copy_reg": "copyreg", "__builtin__": "builtins"}.get(module, module)
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core", 1)
        return getattr(importlib.import_module(module), name)


def load_batch(path: Path) -> dict[bytes, Any]:
    """The pickled dict of one batch file (keys are bytes)."""
    try:
        with path.open("rb") as handle:
            loaded = _SafeUnpickler(handle, encoding="bytes").load()
    except FileNotFoundError as err:
        raise DataError(f"{path}: file not found") from err
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DataError(f"{path}: not a readable CIFAR batch ({type(err).__name__}: {err})") from err
    if not isinstance(loaded, dict):
        raise DataError(f"{path}: not a CIFAR batch (a {type(loaded).__name__}, not a dict)")
    return {k.encode() if isinstance(k, str) else k: v for k, v in loaded.items()}


def layout(folder: Path) -> tuple[Path, dict[str, list[Path]], Path, bytes, bytes]:
    """(folder, {split: files}, meta file, label key, names key) for CIFAR-10 or -100."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    if not any((folder / name).exists() for name in ("test_batch", "test")):
        folder = next((folder / s for s in SUBFOLDERS if (folder / s).is_dir()), folder)
    train10 = sorted(folder.glob("data_batch_*"), key=lambda p: p.name)
    if train10 or (folder / "test_batch").exists():
        if not train10:
            raise DataError(f"{folder}: CIFAR-10 layout without data_batch_* files")
        if not (folder / "test_batch").is_file():
            raise DataError(f"{folder / 'test_batch'}: file not found (CIFAR-10 layout)")
        splits = {"train": train10, "test": [folder / "test_batch"]}
        return folder, splits, folder / "batches.meta", b"labels", b"label_names"
    if (folder / "train").is_file() and (folder / "test").is_file():
        splits = {"train": [folder / "train"], "test": [folder / "test"]}
        return folder, splits, folder / "meta", b"fine_labels", b"fine_label_names"
    raise DataError(f"{folder}: no CIFAR batch files (expected data_batch_1..5 + test_batch "
                    f"for CIFAR-10, or train + test for CIFAR-100)")


def _images_labels(batch: dict[bytes, Any], key: bytes, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if b"data" not in batch or key not in batch:
        raise DataError(f"{path}: CIFAR batch without b'data' or {key!r}")
    data = np.asarray(batch[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: b'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    labels = np.asarray(batch[key], dtype=np.int64)
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but {labels.size} labels")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def open_cifar(folder: Path, cfg: SourceConfig, split_seed: int) -> SourceData:
    """CIFAR batches, kept in their train/test split; class names from the meta file."""
    del split_seed  # CIFAR always has a split
    folder, splits, meta_path, label_key, names_key = layout(folder)
    names: list[str] | None = None
    if meta_path.is_file():
        meta = load_batch(meta_path)
        if names_key not in meta:
            raise DataError(f"{meta_path}: no {names_key!r} in the CIFAR meta file")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    default = 10 if label_key == b"labels" else 100
    if names is None and cfg.classes is None:
        names = [str(i) for i in range(default)]
    classes = class_names(cfg, names, -1, str(meta_path))

    def batches() -> Iterator[Batch]:
        for split, paths in splits.items():
            progress = Progress(f"{folder} ({split})")
            for path in paths:
                images, labels = _images_labels(load_batch(path), label_key, path)
                if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
                    raise DataError(f"{path}: labels outside [0, {len(classes)})")
                yield split, np.ascontiguousarray(images), labels
                progress.update(len(labels))

    info = {"files": {s: [p.name for p in ps] for s, ps in splits.items()}, "split": "source"}
    return SourceData(classes, batches(), info)
