"""The validation split and the class-balanced label subsets of the training split, as index files.

Validation: a seeded, stratified ``val_fraction`` of every class of the training split
(:func:`components.data.split.stratified_split`), written to ``val.txt``. It is what every
choice reads (linear-probe L2, fine-tuning and baseline recipes, the registry gate); the test
split is only ever scored. Label subsets and the supervised 100% baseline train on the rest.

Rule: for a fraction ``f`` of a training split of ``N`` images and ``C`` classes, every class
gets ``k = max(1, round_half_up(f * N / C))`` images, capped at the images that class has
outside the validation split. Each class's non-validation indices are shuffled once with
``seed``; a subset takes the first ``k`` of that order, so a smaller fraction is always
contained in a larger one (1% inside 10%).

Files (``data/subsets/``): ``<tag>.txt`` and ``val.txt`` hold one train-split index per line,
sorted, and ``manifest.json`` records the seed, the data set's content hash and exact counts
per class.
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.data.store import CanonicalDataset, replace_dir
from components.errors import DataError

MANIFEST = "manifest.json"
VAL_FILE = "val.txt"
RULE = ("per class max(1, round_half_up(fraction * train_size / num_classes)), capped at the "
        "class's images outside the validation split")
VAL_RULE = "per class round_half_up(val_fraction * class size), at least 1 (stratified_split)"


def subset_tag(fraction: float) -> str:
    """0.01 -> '1pct', 0.1 -> '10pct', 0.005 -> '0.5pct' (the name of the subset's file)."""
    return f"{fraction * 100:g}pct"


def per_class_count(fraction: float, train_size: int, num_classes: int) -> int:
    return max(1, int(math.floor(fraction * train_size / num_classes + 0.5)))


def validation_indices(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Sorted int64 indices of the stratified validation split of ``labels`` (:data:`VAL_RULE`)."""
    from components.data.split import stratified_split

    return np.flatnonzero(stratified_split(labels, val_fraction, seed)).astype(np.int64)


def without(count: int, excluded: np.ndarray) -> np.ndarray:
    """Sorted int64 indices of ``range(count)`` not in ``excluded`` (the split minus validation)."""
    keep = np.ones(count, dtype=bool)
    keep[np.asarray(excluded, dtype=np.int64)] = False
    return np.flatnonzero(keep).astype(np.int64)


def balanced_subsets(labels: np.ndarray, num_classes: int, fractions: Sequence[float],
                     seed: int, exclude: np.ndarray | None = None) -> dict[float, np.ndarray]:
    """{fraction: sorted int64 indices into the training split} following :data:`RULE`;
    indices in ``exclude`` (the validation split) are never chosen."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise DataError(f"training split has no images of class(es) {empty.tolist()}; "
                        f"a class-balanced subset needs every class")
    rng = np.random.default_rng(seed)
    allowed = np.ones(len(labels), dtype=bool)
    if exclude is not None:
        allowed[np.asarray(exclude, dtype=np.int64)] = False
    orders = [rng.permutation(np.flatnonzero((labels == c) & allowed)) for c in range(num_classes)]
    subsets = {}
    for fraction in fractions:
        k = per_class_count(fraction, len(labels), num_classes)
        chosen = np.concatenate([order[:k] for order in orders])
        subsets[fraction] = np.sort(chosen).astype(np.int64)
    return subsets


def write_subsets(folder: str | Path, dataset: CanonicalDataset, fractions: Sequence[float],
                  seed: int, val_fraction: float = 0.1) -> dict[str, Any]:
    """Write ``val.txt``, ``<tag>.txt`` files and ``manifest.json`` into ``folder`` atomically;
    returns the manifest."""
    folder = Path(folder)
    labels = dataset.split("train").labels
    num_classes = len(dataset.classes)
    val = validation_indices(labels, val_fraction, seed)
    subsets = balanced_subsets(labels, num_classes, fractions, seed, exclude=val)
    manifest: dict[str, Any] = {
        "seed": seed,
        "content_hash": dataset.content_hash,
        "dataset": dataset.name,
        "split": "train",
        "train_size": int(len(labels)),
        "classes": dataset.classes,
        "rule": RULE,
        "validation": {
            "fraction": val_fraction,
            "file": VAL_FILE,
            "count": int(len(val)),
            "counts_per_class": np.bincount(labels[val], minlength=num_classes).tolist(),
            "rule": VAL_RULE,
        },
        "subsets": {},
    }
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        (tmp / VAL_FILE).write_text("".join(f"{i}\n" for i in val))
        for fraction, indices in subsets.items():
            tag = subset_tag(fraction)
            (tmp / f"{tag}.txt").write_text("".join(f"{i}\n" for i in indices))
            manifest["subsets"][tag] = {
                "fraction": fraction,
                "file": f"{tag}.txt",
                "count": int(len(indices)),
                "counts_per_class": np.bincount(labels[indices], minlength=num_classes).tolist(),
            }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        replace_dir(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def read_subset(path: str | Path, train_size: int) -> np.ndarray:
    """Sorted int64 train-split indices from a subset file; DataError if missing/corrupt/out of range."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as err:
        raise DataError(f"{path}: subset file not found (run the subsets stage)") from err
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable subset file ({err})") from err
    values = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values.append(int(line))
        except ValueError as err:
            raise DataError(f"{path}:{number}: not an integer index: {line[:40]!r}") from err
    indices = np.asarray(values, dtype=np.int64)
    if indices.size == 0:
        raise DataError(f"{path}: subset file is empty")
    bad = indices[(indices < 0) | (indices >= train_size)]
    if bad.size:
        raise DataError(f"{path}: index {int(bad[0])} outside the training split of "
                        f"{train_size} images")
    if np.any(np.diff(indices) <= 0):
        raise DataError(f"{path}: indices are not sorted and unique")
    return indices


def _checked_manifest(folder: Path, dataset: CanonicalDataset) -> dict[str, Any]:
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError as err:
        raise DataError(f"{manifest_path}: not found (run the subsets stage)") from err
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{manifest_path}: corrupt subsets manifest ({err})") from err
    if manifest.get("content_hash") != dataset.content_hash:
        raise DataError(f"{manifest_path}: subsets were made for data set hash "
                        f"{str(manifest.get('content_hash'))[:12]}, not {dataset.content_hash[:12]} "
                        f"({dataset.root}); rerun the subsets stage")
    return manifest


def load_validation(folder: str | Path, dataset: CanonicalDataset) -> np.ndarray:
    """Train-split indices of the versioned validation split (``val.txt``), checked against the
    data set it was made from."""
    folder = Path(folder)
    manifest = _checked_manifest(folder, dataset)
    if "validation" not in manifest:
        raise DataError(f"{folder / MANIFEST}: no validation split (rerun the subsets stage)")
    return read_subset(folder / manifest["validation"]["file"], len(dataset.split("train")))


def load_subset(folder: str | Path, fraction: float, dataset: CanonicalDataset) -> np.ndarray:
    """Indices of the ``fraction`` subset, checked against the data set it was made from."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    manifest = _checked_manifest(folder, dataset)
    tag = subset_tag(fraction)
    if tag not in manifest.get("subsets", {}):
        raise DataError(f"{manifest_path}: no subset {tag!r} (have {sorted(manifest.get('subsets', {}))})")
    return read_subset(folder / manifest["subsets"][tag]["file"], len(dataset.split("train")))
