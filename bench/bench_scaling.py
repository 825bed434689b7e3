"""Data-parallel scaling of SimCLR pretraining on Ray Train: 1 worker vs 2 workers, one run.

Both runs train the same global batch (split over the workers), one torch thread and one CPU
per worker, on a slice of the real Fashion-MNIST files. Reports steady-state images/s (epochs
after the first), their ratio (goal: >= 1.7x), and Ray's fixed costs: ``ray.init`` and the
per-``fit()`` overhead (wall time minus the time spent in training epochs). On a shared machine
it also gives the ratio by CPU seconds of the busiest worker: that removes time lost to other
jobs and idle waits on the other worker, and keeps the CPU work of the communication.

    .venv/bin/python bench/bench_scaling.py [--images 1024] [--batch 128] [--epochs 3]

Writes ``bench/results/bench_scaling.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

FMNIST = Path("/usr/share/datasets/fashion-mnist")
RESULTS = Path(__file__).resolve().parent / "results" / "bench_scaling.json"


def write_slice(root: Path, n_train: int, n_test: int) -> Path:
    """The first images of the real Fashion-MNIST files as a canonical data set."""
    from components.data.idx import iter_images, read_labels
    from components.data.store import DatasetWriter

    target = root / "datasets" / "fashion-mnist"
    with DatasetWriter(target, "fashion-mnist", [str(i) for i in range(10)], 10_000) as writer:
        for split, prefix, count in (("train", "train", n_train), ("test", "t10k", n_test)):
            images = next(iter_images(FMNIST / f"{prefix}-images-idx3-ubyte.gz", batch=count))
            labels = read_labels(FMNIST / f"{prefix}-labels-idx1-ubyte.gz")[:count]
            writer.add(split, np.ascontiguousarray(images), labels)
        writer.commit(source={"kind": "idx", "path": str(FMNIST)})
    return target


def bench_config(workdir: Path, workers: int, args: argparse.Namespace) -> Any:
    from components.config import config_from_dict

    return config_from_dict({
        "paths": {"data": str(workdir), "outputs": str(workdir / "outputs")},
        "model": {"arch": "small", "width": args.width},
        "pretrain": {"epochs": args.epochs, "batch_size": args.batch, "max_images": args.images,
                     "checkpoint_every": args.epochs, "knn_every": 0, "threads_per_worker": 1,
                     "optim": {"warmup_epochs": 1}},
        "ray": {"num_workers": workers, "cpus_per_worker": 1, "max_failures": 0,
                "storage_path": str(workdir / f"checkpoints-{workers}")},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=float, default=0.5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")

    import ray
    import torch

    from components.training.ray_driver import run_pretraining

    load_before = os.getloadavg()
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        workdir = Path(tmp)
        dataset = write_slice(workdir, args.images, 256)
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
        ray_init_s = time.perf_counter() - start
        try:
            for workers in (1, 2):
                outcome = run_pretraining(bench_config(workdir, workers, args), dataset)
                steady = outcome.history[1:] or outcome.history
                train_s = sum(row["epoch_time_s"] for row in outcome.history)
                images = sum(r["images_per_s"] * r["epoch_time_s"] for r in steady)
                runs[str(workers)] = {
                    "images_per_s": sum(r["images_per_s"] for r in steady) / len(steady),
                    # images per CPU-second of the busiest worker: descheduled time removed
                    "images_per_busiest_cpu_s": images / sum(r["epoch_cpu_s"] for r in steady),
                    "epoch_images_per_s": [round(r["images_per_s"], 1) for r in outcome.history],
                    "final_loss": outcome.history[-1]["loss"],
                    "fit_wall_s": outcome.wall_time_s,
                    "train_s": train_s,
                    "fit_overhead_s": outcome.wall_time_s - train_s,
                }
        finally:
            ray.shutdown()
    ratio = runs["2"]["images_per_s"] / runs["1"]["images_per_s"]
    cpu_ratio = runs["2"]["images_per_busiest_cpu_s"] / runs["1"]["images_per_busiest_cpu_s"]
    result = {
        "benchmark": "ray_train_scaling",
        "params": vars(args),
        "baseline": "1 worker x 1 thread, same global batch",
        "runs": runs,
        "ratio_2_over_1": ratio,
        "cpu_time_ratio_2_over_1": cpu_ratio,
        "goal_ratio": 1.7,
        "ray_init_s": ray_init_s,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "ray": ray.__version__,
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"1 worker : {runs['1']['images_per_s']:8.1f} images/s (baseline)")
    print(f"2 workers: {runs['2']['images_per_s']:8.1f} images/s")
    print(f"ratio    : {ratio:.2f}x wall clock (goal >= 1.7x); {cpu_ratio:.2f}x by CPU time of "
          f"the busiest worker (time lost to other jobs removed)")
    print(f"ray.init : {ray_init_s:.1f} s; fit() overhead: "
          f"{runs['1']['fit_overhead_s']:.1f} s (1 worker), {runs['2']['fit_overhead_s']:.1f} s "
          f"(2 workers); load average before {load_before[0]:.1f}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
