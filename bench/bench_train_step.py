"""Training step throughput and achieved FLOP/s against this machine's matrix-multiply peak.

The default encoder (``small`` arch, 28x28x1, batch 256 images = 512 views) through the real
``TrainStep`` (augmentation, one forward of both views, NT-Xent, backward, LARS). FLOPs of one
step are counted with ``torch.utils.flop_counter.FlopCounterMode`` (forward + backward of every
matmul / convolution, including the loss). The peak is ``torch.mm`` of two large fp32 square
matrices, measured in the same run with the same thread count, interleaved with the steps (the
best of each is kept, as the machine is shared).

Prints images/s, GFLOP/s and the fraction of the peak for 1 and 2 threads; writes
``bench/results/train_step.json``.
Run: ``.venv/bin/python bench/bench_train_step.py [--reps 2] [--threads 1 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from components.augment import SimCLRAugment
from components.config import AugmentConfig, ModelConfig, OptimConfig
from components.models.simclr import build_simclr_model
from components.optim import WarmupCosine, build_optimizer, peak_lr
from components.training.step import TrainStep

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.json"


def timed(fn) -> tuple[float, float]:  # noqa: ANN001
    """(wall seconds, CPU seconds of this process) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def make_step(arch: str, width: float, size: int, channels: int, batch: int,
              channels_last: bool, precision: str) -> TrainStep:
    torch.manual_seed(0)
    model = build_simclr_model(ModelConfig(arch=arch, width=width), channels, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optim_cfg = OptimConfig()
    optimizer = build_optimizer(model, optim_cfg, batch)
    schedule = WarmupCosine(peak_lr(optim_cfg, batch), 10, 1000)
    augment = SimCLRAugment(AugmentConfig(crop_scale=(0.2, 1.0)), size, channels)
    return TrainStep(model, optimizer, schedule, augment, 0.5, precision, channels_last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="small")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch", type=int, default=256, help="images (2 views each)")
    parser.add_argument("--reps", type=int, default=2, help="timed steps per thread count")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--mm-size", type=int, default=2048)
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    channels_last = not args.no_channels_last

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, args.channels, args.size, args.size, generator=gen)
    step = make_step(args.arch, args.width, args.size, args.channels, args.batch,
                     channels_last, args.precision)
    with FlopCounterMode(display=False) as counter:
        step(images, 0, torch.Generator().manual_seed(0))
    flops = counter.get_total_flops()
    a = torch.randn(args.mm_size, args.mm_size)
    b = torch.randn(args.mm_size, args.mm_size)
    mm_flops = 2 * args.mm_size**3

    rows = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        torch.mm(a, b)
        step(images, 1, torch.Generator().manual_seed(1))  # warm-up at this thread count
        step_t, mm_t = [], []
        for rep in range(args.reps):
            mm_t += [timed(lambda: torch.mm(a, b)) for _ in range(3)]
            gen_rep = torch.Generator().manual_seed(2 + rep)
            step_t.append(timed(lambda rep=rep, g=gen_rep: step(images, 2 + rep, g)))
        mm_t += [timed(lambda: torch.mm(a, b)) for _ in range(3)]
        best, peak = min(t[0] for t in step_t), mm_flops / min(t[0] for t in mm_t)
        # CPU-time based: FLOPs per CPU-second of this process, step vs mm. Less sensitive to
        # other jobs taking the cores (time we were descheduled is not counted on either side).
        cpu_step, cpu_mm = min(t[1] for t in step_t), min(t[1] for t in mm_t)
        rows[threads] = {
            "step_wall_seconds": [round(t[0], 4) for t in step_t],
            "step_cpu_seconds": [round(t[1], 4) for t in step_t],
            "images_per_s": round(args.batch / best, 1),
            "gflop_per_s": round(flops / best / 1e9, 2),
            "mm_peak_gflop_per_s": round(peak / 1e9, 2),
            "fraction_of_peak": round(flops / best / peak, 3),
            "fraction_of_peak_cpu_time": round((flops / cpu_step) / (mm_flops / cpu_mm), 3),
        }
        r = rows[threads]
        print(f"{threads} thread(s): {r['images_per_s']:.0f} img/s, {r['gflop_per_s']:.1f} GFLOP/s "
              f"= {100 * r['fraction_of_peak']:.0f}% of the torch.mm peak "
              f"{r['mm_peak_gflop_per_s']:.1f} GFLOP/s (CPU-time based "
              f"{100 * r['fraction_of_peak_cpu_time']:.0f}%)", flush=True)

    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "note": "shared with other jobs while measured"},
        "config": {"arch": args.arch, "width": args.width, "image": [args.size, args.size,
                   args.channels], "batch_images": args.batch, "views": 2 * args.batch,
                   "channels_last": channels_last, "precision": args.precision},
        "gflop_per_step": round(flops / 1e9, 2),
        "flops_by_op": {str(op): n for op, n in counter.get_flop_counts()["Global"].items()},
        "threads": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{flops / 1e9:.1f} GFLOP per step (forward + backward); wrote {RESULTS}")


if __name__ == "__main__":
    main()
