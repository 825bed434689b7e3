"""Pretraining img/s by numeric format and memory order: fp32 NCHW vs fp32 channels-last vs
``precision: auto`` channels-last (bf16 where the CPU has bf16 arithmetic), one run.

The embedded default's workload (``params.yaml``: ``small-bottleneck``, stride-2 stem,
global batch 512 over 2 Ray workers with global BN, one CPU and one torch thread each) on the
first images of the real Fashion-MNIST files. The variants alternate, ``--rounds`` times, so a
machine that drifts during the run drifts for all of them; each reports steady-state images/s
(epochs after the first) and its ratio to fp32 NCHW in the same round, and the final loss (the
formats round differently; the loss should not move by more than run-to-run noise).

    .venv/bin/python bench/bench_precision.py [--images 20480] [--epochs 3] [--rounds 2]

Writes ``bench/results/bench_precision.json``.
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

from bench_scaling import write_slice

RESULTS = Path(__file__).resolve().parent / "results" / "bench_precision.json"
# name -> (pretrain.precision, pretrain.channels_last); the first is the baseline
VARIANTS: dict[str, tuple[str, bool]] = {
    "fp32 NCHW": ("fp32", False),
    "fp32 channels-last": ("fp32", True),
    "auto channels-last": ("auto", True),
}


def bench_config(workdir: Path, name: str, images: int, epochs: int, round_: int) -> Any:
    from components.config import config_from_dict, deep_merge, load_config

    precision, channels_last = VARIANTS[name]
    base = load_config(Path(__file__).resolve().parents[1] / "params.yaml").model_dump(mode="json")
    return config_from_dict(deep_merge(base, {
        "paths": {"data": str(workdir), "outputs": str(workdir / "outputs")},
        "pretrain": {"epochs": epochs, "max_images": images, "checkpoint_every": epochs,
                     "knn_every": 0, "threads_per_worker": 1, "precision": precision,
                     "channels_last": channels_last},
        "ray": {"cpus_per_worker": 1, "max_failures": 0,
                "storage_path": str(workdir / f"checkpoints-{round_}-{name.replace(' ', '-')}")},
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_480)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")

    import ray
    import torch

    from components.precision import resolve_precision
    from components.training.ray_driver import prepare_local_instance, run_pretraining

    load_before = os.getloadavg()
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        workdir = Path(tmp)
        dataset = write_slice(workdir, args.images, 256)
        prepare_local_instance()
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
        try:
            for round_ in range(args.rounds):
                row: dict[str, Any] = {}
                for name in VARIANTS:
                    cfg = bench_config(workdir, name, args.images, args.epochs, round_)
                    start = time.perf_counter()
                    history = run_pretraining(cfg, dataset).history
                    steady = history[1:] or history
                    row[name] = {
                        "images_per_s": sum(r["images_per_s"] for r in steady) / len(steady),
                        "epoch_images_per_s": [round(r["images_per_s"], 1) for r in history],
                        "final_loss": history[-1]["loss"],
                        "wall_s": time.perf_counter() - start,
                    }
                baseline = row[next(iter(VARIANTS))]["images_per_s"]
                for res in row.values():
                    res["ratio"] = res["images_per_s"] / baseline
                rounds.append(row)
                print(f"round {round_ + 1}: " + "; ".join(
                    f"{name} {res['images_per_s']:.0f} img/s ({res['ratio']:.2f}x, loss "
                    f"{res['final_loss']:.4f})" for name, res in row.items()), flush=True)
        finally:
            ray.shutdown()
    auto = resolve_precision("auto", torch.device("cpu"))
    result = {
        "benchmark": "pretrain_precision",
        "params": vars(args),
        "baseline": "fp32 NCHW, same round",
        "auto_resolves_to": auto,
        "rounds": rounds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for name in VARIANTS:
        ratios = ", ".join(f"{row[name]['ratio']:.2f}x" for row in rounds)
        print(f"{name:>20}: {ratios} of fp32 NCHW" + (f" (auto = {auto})" if "auto" in name else ""))
    print(f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}; "
          f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
