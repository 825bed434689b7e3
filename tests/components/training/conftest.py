"""Shared fixtures for the training tests: one Ray instance per test module, tiny real data sets.

``fmnist_root``: a slice of the real Fashion-MNIST IDX files (512 train / 256 test images);
``digits_root``: sklearn's 8x8 digits (80/20 stratified), for runs that must take seconds. Both are
written with the canonical store's ``DatasetWriter``, as the ingest stage would.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from components.config import PipelineConfig, config_from_dict, deep_merge
from components.data.store import DatasetWriter

FMNIST = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]
N_TRAIN, N_TEST = 512, 256


def read_idx(path: Path, count: int) -> np.ndarray:
    """The first ``count`` items of an IDX file (uint8 payload): images (n, H, W) or labels (n,)."""
    with gzip.open(path, "rb") as f:
        zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
        assert zero == 0 and dtype == 0x08, f"{path}: not a uint8 IDX file"
        dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        item = int(np.prod(dims[1:])) if ndim > 1 else 1
        data = np.frombuffer(f.read(count * item), dtype=np.uint8)
    return data.reshape(count, *dims[1:])


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``paths.data`` folder holding ``datasets/fashion-mnist`` (canonical format)."""
    if not FMNIST.is_dir():
        pytest.skip(f"{FMNIST} not present")
    data = tmp_path_factory.mktemp("data")
    with DatasetWriter(data / "datasets" / "fashion-mnist", "fashion-mnist", CLASSES,
                       shard_size=300) as writer:
        for split, prefix, count in (("train", "train", N_TRAIN), ("test", "t10k", N_TEST)):
            images = read_idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz", count)[..., None]
            labels = read_idx(FMNIST / f"{prefix}-labels-idx1-ubyte.gz", count)
            writer.add(split, images, labels.astype(np.int64))
        writer.commit(source={"kind": "idx", "path": str(FMNIST), "slice": [N_TRAIN, N_TEST]})
    return data


@pytest.fixture(scope="module")
def ray_session() -> Any:
    """One local Ray instance (2 CPUs) shared by a module's tests; yields its GCS address.

    Not per session: an instance left running while later tests start their own makes Ray
    Train's placement-group cleaner fail ("Found multiple active Ray instances", a traceback in
    the flow's log) and keeps its idle raylet and GCS on the two cores.
    """
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")
    import ray

    from components.training.ray_driver import prepare_local_instance

    if not ray.is_initialized():
        prepare_local_instance()
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def tiny_config(data_root: Path, tmp_path: Path, **sections: dict[str, Any]) -> PipelineConfig:
    """Seconds-scale pretraining: width-0.25 small encoder, 512 images, batch 64, 2 workers."""
    raw: dict[str, Any] = {
        "paths": {"data": str(data_root), "outputs": str(tmp_path / "outputs")},
        "data": {"source": {"kind": "idx", "path": str(FMNIST), "name": "fashion-mnist",
                            "classes": CLASSES}, "transfer": []},
        "augment": {"crop_scale": [0.2, 1.0]},
        "model": {"arch": "small", "width": 0.25, "projection_dim": 32},
        "pretrain": {"epochs": 3, "batch_size": 64, "temperature": 0.5, "max_images": 512,
                     "checkpoint_every": 1, "knn_every": 1, "knn_k": 20, "knn_images": 256,
                     "optim": {"name": "lars", "warmup_epochs": 1}},
        "ray": {"num_workers": 2, "cpus_per_worker": 1, "max_failures": 2,
                "storage_path": str(tmp_path / "checkpoints")},
    }
    for name, extra in sections.items():
        raw = deep_merge(raw, {name: extra})
    return config_from_dict(raw)


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``paths.data`` folder holding ``datasets/digits``: sklearn's 8x8 digits, stratified
    80/20 split (the ingest stage's splitter), for runs that must take seconds."""
    from components.data.digits import digits_arrays
    from components.data.split import stratified_split

    images, labels = digits_arrays()
    is_test = stratified_split(labels, 0.2, seed=0)
    data = tmp_path_factory.mktemp("digits-data")
    with DatasetWriter(data / "datasets" / "digits", "digits", [str(i) for i in range(10)],
                       shard_size=1000) as writer:
        writer.add("train", images[~is_test], labels[~is_test])
        writer.add("test", images[is_test], labels[is_test])
        writer.commit(source={"kind": "digits"})
    return data


def digits_config(data_root: Path, tmp_path: Path, **sections: dict[str, Any]) -> PipelineConfig:
    """:func:`tiny_config` on the digits store (8x8 px: the CIFAR stem, milliseconds a step)."""
    cfg = tiny_config(data_root, tmp_path, **sections)
    raw = deep_merge(cfg.model_dump(mode="json"),
                     {"data": {"source": {"kind": "digits", "path": None, "name": "digits",
                                          "classes": None}}})
    return config_from_dict(raw)
