"""View generation: batched tensor SimCLRAugment vs the usual per-image torchvision PIL pipeline.

Both make two SimCLR views of every image with one thread:
- baseline: PIL transforms (RandomResizedCrop, flip, ColorJitter p=0.8, RandomGrayscale,
  ToTensor) per image in a Dataset, served by a DataLoader with one worker process;
- ours: ``SimCLRAugment`` on whole uint8 batches (to_float_tensor + 2 calls), in-process.

Prints images/s of each and the ratio; writes ``bench/results/augment.json``.
Run: ``.venv/bin/python bench/bench_augment.py [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from components.augment import SimCLRAugment, to_float_tensor
from components.config import AugmentConfig

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
RESULTS = Path(__file__).resolve().parent / "results" / "augment.json"


def load_images(kind: str, count: int) -> np.ndarray:
    """uint8 (count, H, W, C): Fashion-MNIST 28x28x1, or random 32x32x3 (CIFAR-sized)."""
    if kind == "fashion28" and FASHION.is_file():
        with gzip.open(FASHION) as handle:
            raw = np.frombuffer(handle.read()[16:], dtype=np.uint8)
        return raw[: count * 784].reshape(count, 28, 28, 1).copy()
    if kind == "fashion28":
        return np.random.default_rng(0).integers(0, 256, (count, 28, 28, 1), dtype=np.uint8)
    return np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def pil_pipeline(cfg: AugmentConfig, size: int) -> transforms.Compose:
    s = cfg.color_strength
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=cfg.crop_scale, ratio=cfg.crop_ratio),
        transforms.RandomHorizontalFlip(cfg.flip_p),
        transforms.RandomApply(
            [transforms.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=cfg.jitter_p
        ),
        transforms.RandomGrayscale(cfg.grayscale_p),
        transforms.ToTensor(),
    ])


class TwoViews(Dataset):
    def __init__(self, images: np.ndarray, transform: transforms.Compose) -> None:
        self.images, self.transform = images, transform
        self.mode = "L" if images.shape[-1] == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[i]
        img = Image.fromarray(img[..., 0] if self.mode == "L" else img, mode=self.mode)
        return self.transform(img), self.transform(img)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def bench_pil(images: np.ndarray, cfg: AugmentConfig, batch: int, seconds: float) -> float:
    loader = DataLoader(
        TwoViews(images, pil_pipeline(cfg, images.shape[1])), batch_size=batch, shuffle=False,
        num_workers=1, worker_init_fn=_worker_init, persistent_workers=False, drop_last=True,
    )
    done, start, first = 0, None, True
    for epoch in range(100):
        for v1, _ in loader:
            if first:  # the worker's start-up is not part of the rate
                first, start = False, time.perf_counter()
                continue
            done += v1.shape[0]
            if time.perf_counter() - start > seconds:
                return done / (time.perf_counter() - start)
        del epoch
    return done / (time.perf_counter() - start)


def bench_tensor(images: np.ndarray, cfg: AugmentConfig, batch: int, seconds: float) -> float:
    size, channels = images.shape[1], images.shape[-1]
    augment = SimCLRAugment(cfg, size, channels)
    gen = torch.Generator().manual_seed(0)
    augment(to_float_tensor(images[:batch]), gen)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for lo in range(0, len(images) - batch + 1, batch):
            x = to_float_tensor(images[lo: lo + batch])
            views = (augment(x, gen), augment(x, gen))
            done += views[0].shape[0]
            if time.perf_counter() - start > seconds:
                break
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per pipeline and data set")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--images", type=int, default=8192)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "torch": torch.__version__, "threads": 1},
               "batch": args.batch, "cases": {}}
    cases = {
        "fashion28": AugmentConfig(crop_scale=(0.2, 1.0), color_strength=0.5),
        "rgb32": AugmentConfig(crop_scale=(0.2, 1.0), color_strength=0.5),
    }
    for name, cfg in cases.items():
        images = load_images(name, args.images)
        pil = bench_pil(images, cfg, args.batch, args.seconds)
        ours = bench_tensor(images, cfg, args.batch, args.seconds)
        results["cases"][name] = {
            "image_shape": list(images.shape[1:]),
            "pil_dataloader_images_per_s": round(pil, 1),
            "batched_tensor_images_per_s": round(ours, 1),
            "ratio": round(ours / pil, 2),
        }
        print(f"{name}: PIL+DataLoader {pil:,.0f} img/s (2 views each), "
              f"batched tensors {ours:,.0f} img/s, ratio {ours / pil:.1f}x", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
