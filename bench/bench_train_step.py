"""Training step throughput and achieved FLOP/s against this CPU's FMA limit and matmul rate.

The default encoder (``small`` arch, 28x28x1, batch 256 images = 512 views) through the real
``TrainStep`` (augmentation, one forward of both views, NT-Xent, backward, LARS). FLOPs of one
step are counted with ``torch.utils.flop_counter.FlopCounterMode`` (forward + backward of every
matmul / convolution, including the loss).

Two references, measured in the same run with the same thread count:
- the FMA limit of the cores: fp32 lanes (16 with AVX-512F, 8 with AVX2, from the
  ``/proc/cpuinfo`` flags) x 2 FLOP per FMA x FMA units x clock x threads. Clock and units are
  measured with a small C micro-kernel (compiled with the system's ``gcc -march=native``): a
  chain of 100 dependent integer adds per loop gives cycles per second, 16 independent vector
  FMA chains give the FMA throughput; units = throughput / (lanes x 2 x clock), rounded. Without
  a compiler the clock is ``/proc/cpuinfo``'s MHz and 2 units are assumed (marked ``assumed``);
- ``torch.mm`` of two large fp32 square matrices (a practical rate, not a peak: on AVX-512
  machines the step's convolutions can beat it).
The steps and mm runs are interleaved and the best of each is kept, as the machine is shared.

Prints images/s, GFLOP/s and the fractions of both references for 1 and 2 threads; writes
``bench/results/train_step.json``.
Run: ``.venv/bin/python bench/bench_train_step.py [--reps 2] [--threads 1 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from components.augment import SimCLRAugment
from components.config import AugmentConfig, ModelConfig, OptimConfig
from components.models.simclr import build_simclr_model
from components.optim import WarmupCosine, build_optimizer, peak_lr
from components.precision import cpu_flags
from components.training.step import TrainStep

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.json"

FMA_KERNEL = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
typedef float vf __attribute__((vector_size(VBYTES)));
#define NACC 16
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
  long iters = atol(argv[1]);
  vf acc[NACC], a, b;
  for (int j = 0; j < VBYTES / 4; j++) { a[j] = 0.9999999f; b[j] = 1e-7f; }
  for (int i = 0; i < NACC; i++) acc[i] = a * (float)(i + 1);
  double t0 = now();
  for (long it = 0; it < iters; it++) {
#pragma GCC unroll 16
    for (int i = 0; i < NACC; i++) acc[i] = acc[i] * a + b;  /* one FMA per vector */
  }
  double fma_s = now() - t0;
  long x = 0;
  t0 = now();
  for (long it = 0; it < iters / 16; it++)
    __asm__ volatile(".rept 100\n\tadd $1, %0\n\t.endr" : "+r"(x));  /* 1 cycle each */
  double add_s = now() - t0;
  float s = 0;
  for (int i = 0; i < NACC; i++) for (int j = 0; j < VBYTES / 4; j++) s += acc[i][j];
  printf("%.3f %.4f %g %ld\n", 2.0 * iters * NACC * (VBYTES / 4) / fma_s / 1e9,
         (iters / 16) * 100.0 / add_s / 1e9, s, x);
  return 0;
}
"""


def fma_kernel(lanes: int, workdir: Path) -> Path | None:
    """The FMA / clock micro-kernel compiled for ``lanes`` fp32 lanes, or None without gcc."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        return None
    source, binary = workdir / "fma.c", workdir / f"fma{lanes}"
    source.write_text(FMA_KERNEL)
    subprocess.run([gcc, "-O2", "-march=native", "-ffp-contract=fast", f"-DVBYTES={4 * lanes}",
                    str(source), "-o", str(binary)], check=True, capture_output=True)
    return binary


def run_fma_kernel(binary: Path, threads: int, iters: int = 50_000_000) -> tuple[float, float]:
    """(FMA GFLOP/s summed over ``threads`` concurrent copies, mean clock GHz)."""
    procs = [subprocess.Popen([str(binary), str(iters)], stdout=subprocess.PIPE, text=True)
             for _ in range(threads)]
    outs = [proc.communicate()[0].split() for proc in procs]
    return sum(float(o[0]) for o in outs), sum(float(o[1]) for o in outs) / threads


def cpuinfo_ghz() -> float:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":")[1]) / 1000
    return float("nan")


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

    flags = cpu_flags()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags and "fma" in flags else 4
    kernel_dir = Path(tempfile.mkdtemp(prefix="fma-kernel-"))
    kernel = fma_kernel(lanes, kernel_dir)

    rows = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        torch.mm(a, b)
        fma_runs = [run_fma_kernel(kernel, threads) for _ in range(3)] if kernel else []
        step(images, 1, torch.Generator().manual_seed(1))  # warm-up at this thread count
        step_t, mm_t = [], []
        for rep in range(args.reps):
            mm_t += [timed(lambda: torch.mm(a, b)) for _ in range(3)]
            gen_rep = torch.Generator().manual_seed(2 + rep)
            step_t.append(timed(lambda rep=rep, g=gen_rep: step(images, 2 + rep, g)))
        mm_t += [timed(lambda: torch.mm(a, b)) for _ in range(3)]
        fma_runs += [run_fma_kernel(kernel, threads) for _ in range(2)] if kernel else []
        best, peak = min(t[0] for t in step_t), mm_flops / min(t[0] for t in mm_t)
        if fma_runs:
            fma_measured = max(r[0] for r in fma_runs) * 1e9
            clock = max(r[1] for r in fma_runs)
            units = max(1, round(fma_measured / threads / (lanes * 2 * clock * 1e9)))
            basis = "measured clock and FMA units (micro-kernel)"
        else:
            fma_measured, clock, units = float("nan"), cpuinfo_ghz(), 2
            basis = "assumed: /proc/cpuinfo MHz, 2 FMA units (no C compiler)"
        fma_limit = lanes * 2 * units * clock * 1e9 * threads
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
            "fma_limit_gflop_per_s": round(fma_limit / 1e9, 1),
            "fma_limit_basis": basis,
            "fma_lanes_fp32": lanes, "fma_units": units, "clock_ghz": round(clock, 3),
            "fma_kernel_gflop_per_s": round(fma_measured / 1e9, 1),
            "fraction_of_fma_limit": round(flops / best / fma_limit, 3),
            "fraction_of_fma_limit_cpu_time": round(flops / cpu_step / (fma_limit / threads), 3),
        }
        r = rows[threads]
        print(f"{threads} thread(s): {r['images_per_s']:.0f} img/s, {r['gflop_per_s']:.1f} GFLOP/s "
              f"= {100 * r['fraction_of_fma_limit']:.0f}% of the FMA limit "
              f"{r['fma_limit_gflop_per_s']:.0f} GFLOP/s ({lanes} lanes x 2 x {units} units x "
              f"{clock:.2f} GHz x {threads}; CPU-time based "
              f"{100 * r['fraction_of_fma_limit_cpu_time']:.0f}%), "
              f"{100 * r['fraction_of_peak']:.0f}% of torch.mm's {r['mm_peak_gflop_per_s']:.1f} "
              f"GFLOP/s (CPU-time based {100 * r['fraction_of_peak_cpu_time']:.0f}%)", flush=True)
    shutil.rmtree(kernel_dir, ignore_errors=True)

    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "note": "shared with other jobs while measured",
                    "isa": sorted(f for f in flags if f in ("avx2", "fma", "avx512f",
                                                             "avx512_bf16", "amx_bf16")),
                    "loadavg": os.getloadavg()},
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
