"""Smoke run of ``presets/large.yaml``'s code path, shrunk with ``--set``, every stage on the CPU.

Writes a few hundred synthetic PNGs (``--images``, 10 classes, 96x96 RGB: a colour per class
plus noise) as an image folder, then runs every stage (ingest at 224 px, subsets, pretrain,
linear-eval, finetune, transfer with fine-tuning on the same folder, baselines, report) through
``components.stages.runner`` with the ``large`` preset (image_folder source, ResNet-50 with
the ImageNet stem, 3-layer head, bf16 autocast, channels-last) and these overrides: width
1/16, 1 epoch, batch 32, one local worker on the CPU, ``evaluate.device=auto``. Prints one line
per stage and writes ``bench/results/large_smoke.json``.

Run: ``nice -n 10 .venv/bin/python bench/bench_large_smoke.py [--images 300]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.config import load_config  # noqa: E402
from components.stages.runner import stage_function  # noqa: E402

STAGES = ["ingest", "subsets", "pretrain", "linear-eval", "finetune", "transfer", "baselines", "report"]


def write_folder(folder: Path, count: int, size: int = 96, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 226, (10, 3))
    for i in range(count):
        label = i % 10
        pixels = np.clip(colours[label] + rng.integers(-30, 31, (size, size, 3)), 0, 255)
        (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"class{label}" / f"{i:05d}.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-large-smoke"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/large_smoke.json")
    args = parser.parse_args()
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    folder = work / "images"
    write_folder(folder, args.images)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = work / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    source = f"{{kind: image_folder, path: {folder}, name: imagenet, image_size: 224, channels: 3}}"
    overrides = [
        f"data.source={source}",
        f"data.transfer=[{{kind: image_folder, path: {folder}, name: folder-transfer, "
        f"image_size: 224, channels: 3}}]",
        "data.shard_size=64", f"paths.data={work}/data", f"paths.outputs={work}/outputs",
        "model.width=0.0625", "pretrain.epochs=1", "pretrain.batch_size=32",
        "pretrain.knn_images=50", "pretrain.knn_k=10", "pretrain.optim.warmup_epochs=0",
        "ray.num_workers=1", "ray.cpus_per_worker=1", "ray.use_gpu=false",
        f"ray.storage_path={work}/checkpoints", f"tracking.tracking_uri=sqlite:///{work}/mlflow.db",
        "evaluate.device=auto", f"evaluate.cache_dir={work}/cache", "evaluate.batch_size=64",
        "evaluate.linear={l2_grid: [1.0e-4], epochs: 20}",
        "evaluate.finetune={epochs: 1, batch_size: 32, min_steps: 0, monitor_images: 30}",
        "evaluate.supervised={recipes: [{}], full_recipes: [{}]}",
        "evaluate.supervised_full_epochs=1", "evaluate.transfer_finetune=true",
        "evaluate.embedding_method=pca", "evaluate.embedding_points=100", "evaluate.knn.k=10",
    ]
    cfg = load_config(params, str(ROOT / "presets/large.yaml"), overrides)
    print(f"model {cfg.model.arch} stem {cfg.model.stem} width {cfg.model.width}, "
          f"{cfg.pretrain.precision}, channels_last {cfg.pretrain.channels_last}", flush=True)
    seconds, metrics, load_before = {}, {}, os.getloadavg()
    started = time.perf_counter()
    for stage in STAGES:
        t0 = time.perf_counter()
        result = stage_function(stage)(cfg)
        seconds[stage] = time.perf_counter() - t0
        metrics.update(result.metrics)
        print(f"[smoke] {stage:12s} {seconds[stage]:7.1f} s", flush=True)
    result = {"images": args.images, "overrides": overrides, "preset": "large",
              "image_shape": list(cfg.data.source.image_size and (224, 224, 3)),
              "seconds": seconds, "total_s": time.perf_counter() - started,
              "metrics": {k: v for k, v in metrics.items() if isinstance(v, float | int)},
              "load_average_before": load_before, "load_average_after": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"PASS: every stage ran; {result['total_s']:.0f} s; wrote {args.out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
