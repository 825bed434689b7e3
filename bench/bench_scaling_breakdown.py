"""Where the second worker's time goes: short instrumented 1- vs 2-process SimCLR steps, no Ray.

The workers are real processes (``torch.multiprocessing``, gloo on loopback, as Ray Train's
workers): the pipeline's model (``components.training.loop.build_model``, global BN when on),
``DistributedDataParallel`` and ``TrainStep`` on the first Fashion-MNIST images, with the
configuration of ``params.yaml`` (or ``--set key=value`` overrides). Each variant times
``--steps`` steps after 2 warm-up steps and reports the slowest rank's mean step, its phases
(``TrainStep.phase_seconds``: views, forward incl. BN all-reduces, loss incl. the NT-Xent
gather, backward incl. DDP's gradient all-reduce, optimizer), the time inside the BN
all-reduces of the forward pass, and images/s relative to one process with the whole batch.

Variants (an ablation: each removes or adds one cost):
- ``1 process``: the whole global batch, the baseline;
- ``2 independent``: two processes with half the batch each and NO communication: the ceiling
  set by the cores themselves (contention, memory bandwidth, other jobs);
- ``2 DDP, local BN``: + gathered NT-Xent and DDP's gradient all-reduce;
- ``2 DDP, global BN`` (the default): + the BN statistics summed over the ranks at every
  layer, through shared memory (``components.collectives``: both ranks on one host);
- ``... over gloo``: the same sums through torch.distributed (gloo), as before the shared-memory
  collective (and as across hosts);
- ``... gradients over gloo``: DDP's own gloo all-reduce of the gradients instead of the
  shared-memory one (``components.collectives.share_gradients_in_memory``);
- ``... NT-Xent gather over gloo``: torch.distributed's all-gather for the loss instead of the
  gather through shared memory (``components.collectives.gather_by_sum``);
- ``... no BN all-reduce``: the global-BN code path with its all-reduces skipped (local
  statistics): its compute cost apart from the synchronisation;
- ``... + broadcast_buffers``: what DDP's per-forward buffer broadcast would add back;
- ``... 2 threads each``: intra-op threads oversubscribing the cores.

    .venv/bin/python bench/bench_scaling_breakdown.py [--steps 8] [--set pretrain.batch_size=128]

Writes ``bench/results/bench_scaling_breakdown.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FMNIST = Path("/usr/share/datasets/fashion-mnist")
RESULTS = ROOT / "bench" / "results" / "bench_scaling_breakdown.json"
VARIANTS: dict[str, dict[str, Any]] = {
    "1 process": {"world": 1},
    "2 independent": {"world": 2, "independent": True},
    "2 DDP, local BN": {"world": 2, "global_bn": False},
    "2 DDP, global BN": {"world": 2},
    "2 DDP, global BN over gloo": {"world": 2, "collective": "gloo"},
    "2 DDP, global BN, gradients over gloo": {"world": 2, "gradients": "gloo"},
    "2 DDP, global BN, NT-Xent gather over gloo": {"world": 2, "gather": "gloo"},
    "2 DDP, global BN compute, no BN all-reduce": {"world": 2, "bn_all_reduce": False},
    "2 DDP, global BN + broadcast_buffers": {"world": 2, "broadcast_buffers": True},
    "2 DDP, global BN, 2 threads each": {"world": 2, "threads": 2},
}


def _worker(rank: int, variant: dict[str, Any], cfg_json: dict, port: int, steps: int,
            out: str) -> None:
    import torch.distributed as dist
    from torch import nn

    import components.models.global_bn as global_bn
    from components.augment import SimCLRAugment, to_float_tensor
    from components.collectives import all_reduce_sum, share_gradients_in_memory
    from components.config import config_from_dict
    from components.data.idx import iter_images
    from components.optim import WarmupCosine, build_optimizer, peak_lr
    from components.precision import resolve_precision
    from components.training.loop import build_model, shared_loss_sum
    from components.training.sampling import step_generator
    from components.training.step import TrainStep

    torch.set_num_threads(variant.get("threads", 1))
    if "global_bn" in variant:
        cfg_json = {**cfg_json, "model": {**cfg_json["model"], "global_bn": variant["global_bn"]}}
    cfg = config_from_dict(cfg_json)
    pre = cfg.pretrain
    world = variant["world"]
    communicating = world > 1 and not variant.get("independent", False)
    if communicating:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
    per_rank = pre.batch_size // world
    images = next(iter_images(FMNIST / "train-images-idx3-ubyte.gz", batch=per_rank * (steps + 2)))
    images = np.ascontiguousarray(images).reshape(-1, 28, 28, 1)
    model = build_model(cfg, 1, 28, world if communicating else 1, torch.device("cpu"))
    if pre.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, pre.optim, pre.batch_size)
    schedule = WarmupCosine.from_epochs(peak_lr(pre.optim, pre.batch_size), 1, 10, 100)
    net, loss_sum = model, None
    if communicating:
        net = nn.parallel.DistributedDataParallel(
            model, broadcast_buffers=variant.get("broadcast_buffers", not cfg.model.global_bn))
        if variant.get("gradients", "shared memory") == "shared memory":
            share_gradients_in_memory(net)
        if variant.get("gather", "shared memory") == "shared memory":
            loss_sum = shared_loss_sum(model, pre.batch_size)
    step = TrainStep(net, optimizer, schedule, SimCLRAugment(cfg.augment, 28, 1), pre.temperature,
                     resolve_precision(pre.precision, torch.device("cpu")), pre.channels_last,
                     sum_over_ranks=loss_sum)
    bn_seconds = [0.0]
    layers = [m for m in model.modules() if isinstance(m, global_bn.GlobalBatchNorm)]
    if variant.get("collective") == "gloo":  # the statistics through torch.distributed instead
        for layer in layers:
            layer.sum_over_ranks = all_reduce_sum
    real_sum = layers[0].sum_over_ranks if layers else None

    def timed_sum(x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        result = real_sum(x)
        bn_seconds[0] += time.perf_counter() - start
        return result

    for layer in layers:  # the collective each layer was built with (shared memory or gloo)
        layer.sum_over_ranks = timed_sum if variant.get("bn_all_reduce", True) else (lambda x: x)
    net.train()
    walls = []
    for i in range(steps + 2):
        if i == 2:  # after warm-up
            step.phase_seconds, bn_seconds[0] = {}, 0.0
            cpu_start = time.process_time()
        batch = to_float_tensor(images[i * per_rank:(i + 1) * per_rank])
        start = time.perf_counter()
        step(batch, i, step_generator(0, i, rank))
        walls.append(time.perf_counter() - start)
    cpu = time.process_time() - cpu_start
    result = {"step_s": float(np.mean(walls[2:])), "cpu_per_step_s": cpu / steps,
              "phases_s": {k: v / steps for k, v in step.phase_seconds.items()},
              "bn_all_reduce_s": bn_seconds[0] / steps}
    if communicating:  # the floor of one BN all-reduce: 2 x 256 channels + count, idle peers
        stats = torch.zeros(2 * 256 + 1)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(100):
            dist.all_reduce(stats)
        result["all_reduce_513_floats_s"] = (time.perf_counter() - start) / 100
        result["bn_layers"] = sum(isinstance(m, global_bn.GlobalBatchNorm) for m in model.modules())
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_variant(variant: dict[str, Any], cfg_json: dict, steps: int) -> dict[str, Any]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(variant, cfg_json, _free_port(), steps, out),
                 nprocs=variant["world"], join=True)
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text())
                 for r in range(variant["world"])]
    slowest = max(ranks, key=lambda r: r["step_s"])
    return {"step_s": slowest["step_s"], "ranks": ranks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--variant", action="append", choices=list(VARIANTS),
                        help="run only these (default: all)")
    args = parser.parse_args()
    from components.config import load_config

    cfg = load_config(ROOT / "params.yaml", overrides=args.set)
    cfg_json = cfg.model_dump(mode="json")
    load_before = os.getloadavg()
    rows: dict[str, Any] = {}
    for name in args.variant or list(VARIANTS):
        rows[name] = run_variant(VARIANTS[name], cfg_json, args.steps)
        base = rows.get("1 process", rows[name])["step_s"]
        # images/s relative to one process: B / step time (2 x B/2 per step for 2 processes)
        rows[name]["speedup_vs_1_process"] = base / rows[name]["step_s"]
        r0 = rows[name]["ranks"][0]
        phases = " ".join(f"{k} {1000 * v:.0f}" for k, v in r0["phases_s"].items())
        print(f"{name:40s} step {1000 * rows[name]['step_s']:6.0f} ms "
              f"({rows[name]['speedup_vs_1_process']:.2f}x)  rank 0 ms: {phases}, "
              f"BN all-reduces (fwd + bwd) {1000 * r0['bn_all_reduce_s']:.1f}, "
              f"cpu/step {1000 * r0['cpu_per_step_s']:.0f}"
              + (f", 1 all-reduce {1e6 * r0['all_reduce_513_floats_s']:.0f} us x "
                 f"{r0['bn_layers']} BN layers" if "all_reduce_513_floats_s" in r0 else ""),
              flush=True)
    result = {"benchmark": "scaling_breakdown", "steps": args.steps, "overrides": args.set,
              "model": cfg_json["model"], "batch_size": cfg.pretrain.batch_size,
              "variants": rows, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "cpus": os.cpu_count(), "torch": torch.__version__}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}; "
          f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
