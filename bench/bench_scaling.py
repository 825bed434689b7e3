"""Data-parallel scaling of SimCLR pretraining on Ray Train: 1 worker vs 2 workers, one run.

Both runs train the same global batch (split over the workers), one torch thread and one CPU
per worker, on a slice of the real Fashion-MNIST files. Two workloads:
- ``small``: the original one (global batch 128, 1,024 images, ``small`` encoder x0.5);
- ``default``: the embedded default of ``params.yaml`` (global batch 512, ``small-bottleneck``
  x0.75 with the stride-2 stem, global BN on with 2 workers), on 4,096 images.
Reports steady-state images/s (epochs after the first), their ratio (goal: >= 1.7x), and Ray's
fixed costs: ``ray.init`` and the per-``fit()`` overhead (wall time minus the time spent in
training epochs). On a shared machine it also gives the ratio by CPU seconds of the busiest
worker: that removes time lost to other jobs and idle waits on the other worker, and keeps the
CPU work of the communication. ``bench/bench_scaling_breakdown.py`` splits the step's time.

    .venv/bin/python bench/bench_scaling.py [--workload small default] [--epochs 3]

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


# workload -> (model section, global batch, training images)
WORKLOADS: dict[str, tuple[dict[str, Any], int, int]] = {
    "small": ({"arch": "small", "width": 0.5, "stem": "auto"}, 128, 1024),
    "default": ({}, 512, 4096),  # params.yaml's model: small-bottleneck x0.75, stride2, global BN
}


def bench_config(workdir: Path, workers: int, workload: str, epochs: int) -> Any:
    from components.config import config_from_dict, deep_merge, load_config

    model, batch, images = WORKLOADS[workload]
    base = load_config(Path(__file__).resolve().parents[1] / "params.yaml").model_dump(mode="json")
    return config_from_dict(deep_merge(base, {
        "paths": {"data": str(workdir), "outputs": str(workdir / "outputs")},
        "model": model,
        "pretrain": {"epochs": epochs, "batch_size": batch, "max_images": images,
                     "checkpoint_every": epochs, "knn_every": 0, "threads_per_worker": 1,
                     "optim": {"warmup_epochs": 1}},
        "ray": {"num_workers": workers, "cpus_per_worker": 1, "max_failures": 0,
                "storage_path": str(workdir / f"checkpoints-{workload}-{workers}")},
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", nargs="+", choices=list(WORKLOADS),
                        default=list(WORKLOADS))
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")

    import ray
    import torch

    from components.training.ray_driver import prepare_local_instance

    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        workdir = Path(tmp)
        dataset = write_slice(workdir, max(WORKLOADS[w][2] for w in args.workload), 256)
        prepare_local_instance()  # the pipeline's local-instance settings
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
        ray_init_s = time.perf_counter() - start
        try:
            for workload in args.workload:
                results[workload] = measure(workdir, dataset, workload, args.epochs)
        finally:
            ray.shutdown()
    result = {
        "benchmark": "ray_train_scaling",
        "params": vars(args),
        "baseline": "1 worker x 1 thread, same global batch",
        "workloads": results,
        "goal_ratio": 1.7,
        "ray_init_s": ray_init_s,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "ray": ray.__version__,
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for workload, res in results.items():
        runs = res["runs"]
        print(f"[{workload}: {res['description']}]")
        print(f"  1 worker : {runs['1']['images_per_s']:8.1f} images/s (baseline)")
        print(f"  2 workers: {runs['2']['images_per_s']:8.1f} images/s")
        print(f"  ratio    : {res['ratio_2_over_1']:.2f}x wall clock (goal >= 1.7x); "
              f"{res['cpu_time_ratio_2_over_1']:.2f}x by CPU time of the busiest worker")
        print(f"  fit() overhead: {runs['1']['fit_overhead_s']:.1f} s (1 worker), "
              f"{runs['2']['fit_overhead_s']:.1f} s (2 workers)")
    print(f"ray.init {ray_init_s:.1f} s; load average before {load_before[0]:.1f}, after "
          f"{os.getloadavg()[0]:.1f}; wrote {RESULTS}")


def measure(workdir: Path, dataset: Path, workload: str, epochs: int) -> dict[str, Any]:
    """1 and 2 workers on one workload: steady-state img/s, CPU-time rate, fit() overhead."""
    from components.training.ray_driver import run_pretraining

    runs: dict[str, Any] = {}
    for workers in (1, 2):
        cfg = bench_config(workdir, workers, workload, epochs)
        outcome = run_pretraining(cfg, dataset)
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
    model = cfg.model
    return {
        "description": f"{model.arch} x{model.width} stem {model.stem}, batch "
                       f"{cfg.pretrain.batch_size}, {cfg.pretrain.max_images} images, "
                       f"global_bn {model.global_bn}",
        "runs": runs,
        "ratio_2_over_1": runs["2"]["images_per_s"] / runs["1"]["images_per_s"],
        "cpu_time_ratio_2_over_1": (runs["2"]["images_per_busiest_cpu_s"]
                                    / runs["1"]["images_per_busiest_cpu_s"]),
    }


if __name__ == "__main__":
    main()
