"""Small real data sets and encoders for the evaluation tests (shared with the stage tests).

Fashion-MNIST slices are parsed from the real IDX files; digits come from scikit-learn; a
"CIFAR-like" set is 3-channel 16x16 images. Everything is written with ``DatasetWriter`` into a
``paths.data`` layout, and the encoder to evaluate is a random-init ``small`` encoder saved with
``save_encoder`` (what the pretrain stage writes).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from components.config import ModelConfig, PipelineConfig, config_from_dict
from components.data.store import CanonicalDataset, DatasetWriter

FMNIST = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]
N_TRAIN, N_TEST = 600, 200
SMALL_MODEL = {"arch": "small", "width": 0.25}


def read_idx(path: Path, count: int) -> np.ndarray:
    """The first ``count`` items of a uint8 IDX file: images (n, H, W) or labels (n,)."""
    with gzip.open(path, "rb") as f:
        zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
        assert zero == 0 and dtype == 0x08, f"{path}: not a uint8 IDX file"
        dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        item = int(np.prod(dims[1:])) if ndim > 1 else 1
        data = np.frombuffer(f.read(count * item), dtype=np.uint8)
    return data.reshape(count, *dims[1:])


def write_fmnist(root: Path, name: str = "fmnist", n_train: int = N_TRAIN,
                 n_test: int = N_TEST) -> CanonicalDataset:
    with DatasetWriter(root, name, CLASSES, shard_size=256) as writer:
        for split, prefix, count in (("train", "train", n_train), ("test", "t10k", n_test)):
            images = read_idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz", count)[..., None]
            labels = read_idx(FMNIST / f"{prefix}-labels-idx1-ubyte.gz", count).astype(np.int64)
            writer.add(split, images, labels)
        return writer.commit(source={"kind": "idx", "slice": [n_train, n_test]})


def write_digits(root: Path, name: str = "digits") -> CanonicalDataset:
    """sklearn digits, 8x8 grey, scaled to 0..255; every 5th image is a test image."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    test = np.arange(len(labels)) % 5 == 0
    with DatasetWriter(root, name, [str(d) for d in range(10)], shard_size=1000) as writer:
        writer.add("train", images[~test], labels[~test])
        writer.add("test", images[test], labels[test])
        return writer.commit(source={"kind": "digits"})


def write_rgb16(root: Path, name: str = "rgb16", n_train: int = 120, n_test: int = 60) -> CanonicalDataset:
    """CIFAR-like 3-channel 16x16 images of 3 classes (a colour per class plus noise)."""
    rng = np.random.default_rng(0)
    colours = np.array([[220, 40, 40], [40, 200, 40], [40, 40, 220]], dtype=np.float64)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 3
        images = colours[labels][:, None, None, :] + rng.normal(0, 30, (n, 16, 16, 3))
        return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)

    with DatasetWriter(root, name, ["red", "green", "blue"], shard_size=1000) as writer:
        writer.add("train", *make(n_train))
        writer.add("test", *make(n_test))
        return writer.commit(source={"kind": "cifar"})


def save_random_encoder(path: Path, model: dict[str, Any] | None = None, in_channels: int = 1,
                        image_size: int = 28, seed: int = 0) -> Path:
    import torch

    from components.models.checkpoint import save_encoder
    from components.models.encoder import build_encoder

    cfg = ModelConfig(**(model or SMALL_MODEL))
    torch.manual_seed(seed)
    encoder = build_encoder(cfg, in_channels=in_channels, image_size=image_size)
    return save_encoder(path, encoder, cfg, in_channels, image_size, meta={"stage": "test"})


def eval_params(tmp: Path, transfer: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A seconds-scale params tree with every path inside ``tmp``."""
    return {
        "seed": 0,
        "paths": {"data": str(tmp / "data"), "outputs": str(tmp / "outputs")},
        "data": {"source": {"kind": "idx", "path": str(FMNIST), "name": "fmnist",
                            "classes": CLASSES},
                 "transfer": transfer if transfer is not None
                 else [{"kind": "digits", "path": None, "name": "digits"}]},
        "subsets": {"fractions": [0.01, 0.1], "seed": 0},
        "tracking": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db"},
        "model": dict(SMALL_MODEL),
        "evaluate": {
            "batch_size": 256,
            "cache_dir": str(tmp / "cache"),
            "embedding_method": "pca",
            "embedding_points": 150,
            "linear": {"l2_grid": [1.0e-4, 1.0e-2], "val_fraction": 0.2, "epochs": 30},
            "finetune": {"epochs": 2, "batch_size": 32, "lr": 0.05, "min_steps": 4,
                         "monitor_images": 64},
            "knn": {"k": 20, "temperature": 0.1},
            "supervised_full_epochs": 1,
        },
    }


def build_project(tmp: Path, transfer: list[dict[str, Any]] | None = None,
                  with_encoder: bool = True, with_subsets: bool = True) -> tuple[PipelineConfig, Path]:
    """Data, subsets, encoder and a params file under ``tmp``; returns (cfg, params path)."""
    from components.data.subsets import write_subsets
    from components.stage_api import StagePaths

    params = eval_params(tmp, transfer)
    cfg = config_from_dict(params)
    paths = StagePaths.of(cfg)
    dataset = write_fmnist(paths.dataset(cfg.data.source))
    for source in cfg.data.transfer:
        if source.kind == "digits":
            write_digits(paths.transfer_dataset(source), source.name)
        else:
            write_rgb16(paths.transfer_dataset(source), source.name)
    if with_subsets:
        write_subsets(paths.subsets, dataset, cfg.subsets.fractions, cfg.subsets.seed,
                      cfg.subsets.val_fraction)
    if with_encoder:
        save_random_encoder(paths.stage_dir("pretrain") / "encoder.pt", seed=1)  # != baselines
    params_file = tmp / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    return cfg, params_file
