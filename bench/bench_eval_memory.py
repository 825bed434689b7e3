"""Memory benchmark of the evaluation stages: peak RSS on a store of N and 4N images.

Writes a canonical store of ``N`` (and ``4N``) synthetic 64x64x3 training images (plus N/5
test images, 10 classes: a colour per class plus noise) straight into the store format, the
label subsets (val, 1%, 10%) and a random-init encoder in the ``save_encoder`` format, then runs
each evaluation stage (``linear-eval``, ``finetune``, ``transfer`` with fine-tuning on, on the
same store, and ``baselines``) in a process of its own and records its peak RSS
(``ru_maxrss``) and wall time. Every stage runs once per code version: ``--code NAME=ROOT``
(e.g. ``base=/tmp/eval-base`` for main at 6e3def5: ``git worktree add /tmp/eval-base 6e3def5``)
with ``PYTHONPATH=ROOT``, checking that ``components`` is imported from there.

Short schedules, so the 2-core box is not monopolised: 1 fine-tuning epoch, one supervised
recipe, a ``small`` encoder of width 0.25 (h = 128-d), 20 L-BFGS iterations, one L2, 1 thread.
Peak RSS is the child's ``VmHWM`` (``ru_maxrss`` is also recorded, but on Linux it keeps the
forking parent's peak across ``exec``, so it would report the bench's own store writing).
Pass: for the current code, 4N/N peak RSS <= 1.3 for every stage and time ratio <= 4.4
(linear plus 10%).

Run: ``nice -n 10 .venv/bin/python bench/bench_eval_memory.py --n 20000
--code base=/tmp/eval-base`` (writes ``bench/results/eval_memory.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = ("linear-eval", "finetune", "transfer", "baselines")
CLASSES = [f"c{i}" for i in range(10)]
SHAPE = (64, 64, 3)
MODEL = {"arch": "small", "width": 0.25, "stem": "stride2"}
MAX_RSS_RATIO, MAX_TIME_RATIO = 1.3, 4.4
# evaluate.linear.max_elements for the current code: 2^22 float32 (16 MiB) puts the pixel
# probe (12,288 features) above its budget at both sizes, as the default 2^27 does from
# N = 11,000 on; the 128-d encoder features stay below it at both sizes
NEW_MAX_ELEMENTS = 1 << 22

CHILD = r"""
import json, resource, sys, time
args = json.loads(sys.argv[1])
import components
assert components.__file__.startswith(args["root"]), components.__file__
import torch
torch.set_num_threads(1)
from components.config import config_from_dict
from components.stages.runner import stage_function
cfg = config_from_dict(args["params"])
started = time.perf_counter()
result = stage_function(args["stage"])(cfg)
seconds = time.perf_counter() - started
# VmHWM (peak RSS of this process image): ru_maxrss would carry the parent's peak over exec
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print("RESULT " + json.dumps({
    "peak_rss_mb": int(hwm.split()[1]) / 1024,
    "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "seconds": seconds,
    "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, float | int)}}))
"""


def write_store(root: Path, n_train: int, seed: int = 0) -> None:
    """``n_train`` + ``n_train // 5`` images written shard by shard (bounded memory)."""
    from components.data.store import DatasetWriter

    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, (len(CLASSES), 3))
    with DatasetWriter(root, "synthetic64", CLASSES, shard_size=5000) as writer:
        for split, count in (("train", n_train), ("test", n_train // 5)):
            for start in range(0, count, 5000):
                k = min(5000, count - start)
                labels = rng.integers(0, len(CLASSES), k)
                noise = rng.integers(-40, 41, (k, *SHAPE), dtype=np.int16)
                images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
                writer.add(split, images, labels)
        writer.commit(source={"kind": "synthetic", "count": n_train})


def params_for(work: Path) -> dict:
    """Keys that exist in the code before and after the change (a new key would be rejected)."""
    return {
        "seed": 0,
        "paths": {"data": str(work / "data"), "outputs": str(work / "outputs")},
        "data": {"source": {"kind": "image_folder", "path": "unused", "name": "synthetic64",
                            "image_size": 64, "channels": 3},
                 "transfer": [{"kind": "image_folder", "path": "unused", "name": "synthetic64t",
                               "image_size": 64, "channels": 3}]},
        "subsets": {"fractions": [0.01, 0.1], "seed": 0},
        "model": dict(MODEL),
        "evaluate": {
            "batch_size": 256, "cache_dir": str(work / "cache"),
            "embedding_method": "pca", "embedding_points": 500,
            "linear": {"l2_grid": [1.0e-4], "epochs": 20},
            "finetune": {"epochs": 1, "batch_size": 128, "min_steps": 0, "monitor_images": 200},
            "knn": {"k": 20},
            "supervised_full_epochs": 1,
            "supervised": {"recipes": [{}], "full_recipes": [{}]},
            "transfer_finetune": True,
        },
    }


def prepare(work: Path, n_train: int) -> dict:
    import torch

    from components.config import ModelConfig, config_from_dict
    from components.data.store import CanonicalDataset
    from components.data.subsets import write_subsets
    from components.models.checkpoint import save_encoder
    from components.models.encoder import build_encoder
    from components.stage_api import StagePaths

    params = params_for(work)
    cfg = config_from_dict(params)
    paths = StagePaths.of(cfg)
    store = paths.dataset(cfg.data.source)
    write_store(store, n_train)
    transfer = paths.transfer_dataset(cfg.data.transfer[0])
    transfer.parent.mkdir(parents=True, exist_ok=True)
    transfer.symlink_to(store, target_is_directory=True)
    write_subsets(paths.subsets, CanonicalDataset(store), cfg.subsets.fractions, cfg.subsets.seed,
                  cfg.subsets.val_fraction)
    torch.manual_seed(1)
    model = ModelConfig(**MODEL)
    save_encoder(paths.stage_dir("pretrain") / "encoder.pt",
                 build_encoder(model, in_channels=3, image_size=64), model, 3, 64,
                 meta={"stage": "bench"})
    return params


def run_stage(code_root: str, stage: str, params: dict, work: Path) -> dict:
    if code_root == str(ROOT):  # the current code's probe budget (a key the old code lacks)
        params = json.loads(json.dumps(params))
        params["evaluate"]["linear"]["max_elements"] = NEW_MAX_ELEMENTS
    shutil.rmtree(work / "cache", ignore_errors=True)  # every stage pays for its features
    env = {**os.environ, "PYTHONPATH": code_root, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(
        {"root": code_root, "stage": stage, "params": params})], cwd=work, env=env,
        capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--code", action="append", default=[],
                        help="NAME=ROOT of another code version (e.g. base=/tmp/eval-base)")
    parser.add_argument("--stages", nargs="*", default=list(STAGES))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-eval-memory"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/eval_memory.json")
    args = parser.parse_args()
    codes = {"new": str(ROOT)} | dict(item.split("=", 1) for item in args.code)
    load_before = os.getloadavg()
    started = time.time()
    table: dict = {}
    for n in (args.n, 4 * args.n):
        work = args.workdir / f"n{n}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        params = prepare(work, n)
        for code, code_root in codes.items():
            for stage in args.stages:
                row = run_stage(code_root, stage, params, work)
                table.setdefault(code, {}).setdefault(stage, {})[str(n)] = row
                print(f"{code:5s} {stage:12s} N={n:6d} "
                      + (f"peak RSS {row['peak_rss_mb']:7.0f} MB  {row['seconds']:7.1f} s"
                         if "error" not in row else f"ERROR {row['error'][-300:]}"), flush=True)
        shutil.rmtree(work, ignore_errors=True)
    checks, ok = {}, True
    print(f"\n4N/N ratios (N = {args.n}): peak RSS, time")
    for code, stages in table.items():
        for stage, rows in stages.items():
            small, large = rows[str(args.n)], rows[str(4 * args.n)]
            if "error" in small or "error" in large:
                checks[f"{code}/{stage}"] = {"error": True}
                ok &= code != "new"
                continue
            rss = large["peak_rss_mb"] / small["peak_rss_mb"]
            seconds = large["seconds"] / small["seconds"]
            passed = rss <= MAX_RSS_RATIO and seconds <= MAX_TIME_RATIO
            checks[f"{code}/{stage}"] = {"rss_ratio": rss, "time_ratio": seconds, "pass": passed}
            if code == "new":
                ok &= passed
            print(f"  {code:5s} {stage:12s} {rss:5.2f}  {seconds:5.2f}  {'ok' if passed else 'FAIL'}")
    result = {
        "n": args.n, "image_shape": list(SHAPE), "model": MODEL, "codes": codes,
        "new_max_elements": NEW_MAX_ELEMENTS,
        "schedule": "finetune 1 epoch, 1 supervised recipe, supervised_full_epochs 1, L-BFGS 20 "
                    "iterations, one L2, 1 torch thread per stage process",
        "table": table, "checks": checks, "pass": ok,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "wall_s": time.time() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'PASS' if ok else 'FAIL'}; wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
