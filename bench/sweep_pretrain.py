"""Pretraining proxy sweep: short single-process SimCLR runs scored by a linear probe on h.

Each variant (a list of ``key=value`` overrides of ``params.yaml``) pretrains for
``--epochs`` epochs on Fashion-MNIST in ONE process with ONE torch thread (the per-worker
setting of the pipeline), using the pipeline's own pieces (``SimCLRAugment``, ``TrainStep``,
LARS, warm-up + cosine), then fits the linear-evaluation protocol of
``components.evaluation.linear`` on all 60k training images and scores the 10k test images.
The first variant is the baseline: every later one prints its linear top-1 minus and divided
by the baseline's, all measured in the same run. Variants run ``--parallel`` at a time (one
per core: two on this machine, as the two Ray workers would).

This is how the embedded default was chosen (docs/benchmarks.md); it is a proxy: short runs,
one process, no Ray. Results append to ``bench/results/sweep_pretrain.jsonl``.

Run: ``.venv/bin/python bench/sweep_pretrain.py --epochs 4 --variant "" --variant
"model.arch=small-bottleneck pretrain.temperature=0.2"``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.config import PipelineConfig, deep_merge, load_config  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "sweep_pretrain.jsonl"


def pretrain_and_probe(cfg: PipelineConfig, dataset_root: Path, seed: int = 0) -> dict:
    """Train ``cfg.pretrain.epochs`` epochs in this process; linear top-1 / kNN of the encoder."""
    from components.augment import SimCLRAugment, to_float_tensor
    from components.data.store import CanonicalDataset
    from components.evaluation.features import encode
    from components.evaluation.knn import knn_top1
    from components.evaluation.linear import fit_linear_probe
    from components.models.simclr import build_simclr_model
    from components.optim import WarmupCosine, build_optimizer, peak_lr
    from components.training.ray_driver import (
        epoch_permutation,
        local_batch_indices,
        step_generator,
    )
    from components.training.step import TrainStep

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    dataset = CanonicalDataset(dataset_root)
    train, test = dataset.split("train"), dataset.split("test")
    height, _, channels = dataset.image_shape
    pre = cfg.pretrain
    model = build_simclr_model(cfg.model, in_channels=channels, image_size=height)
    steps_per_epoch = len(train) // pre.batch_size
    optimizer = build_optimizer(model, pre.optim, pre.batch_size)
    schedule = WarmupCosine.from_epochs(peak_lr(pre.optim, pre.batch_size),
                                        pre.optim.warmup_epochs, pre.epochs, steps_per_epoch)
    augment = SimCLRAugment(cfg.augment, image_size=height, channels=channels)
    train_step = TrainStep(model, optimizer, schedule, augment, pre.temperature)
    started, step, out = time.perf_counter(), 0, {}
    for epoch in range(pre.epochs):  # the pipeline's data order and augmentation streams, one rank
        model.train()
        order = epoch_permutation(seed, epoch, len(train))
        for i in range(steps_per_epoch):
            batch = local_batch_indices(order, i, pre.batch_size, rank=0, world=1)
            out = train_step(to_float_tensor(train.images(batch)), step,
                             step_generator(seed, step, rank=0))
            step += 1
        print(f"  epoch {epoch + 1}/{pre.epochs}: loss {out['loss']:.3f} "
              f"acc {out['contrastive_acc']:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    train_seconds = time.perf_counter() - started

    train_h, test_h = (encode(model.encoder, split, None, channels, height) for split in (train, test))
    lin = cfg.evaluate.linear
    probe = fit_linear_probe(train_h, train.labels, len(dataset.classes), lin.l2_grid,
                             lin.val_fraction, lin.epochs, seed)
    linear = float((probe.scores(test_h).argmax(1) == test.labels).mean())
    knn = knn_top1(train_h, train.labels, test_h, test.labels, k=cfg.evaluate.knn.k,
                   temperature=cfg.evaluate.knn.temperature, num_classes=len(dataset.classes))
    return {"feature_dim": int(train_h.shape[1]), "train_seconds": train_seconds,
            "images_per_s": steps_per_epoch * pre.batch_size * pre.epochs / train_seconds,
            "linear_top1": linear, "knn_top1": float(knn), "l2": probe.l2}


def ingest(work: Path) -> Path:
    """Fashion-MNIST (``params.yaml``'s source) ingested into ``work``; returns its folder."""
    from components.stage_api import StagePaths
    from components.stages.runner import stage_function

    raw = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()),
                     {"paths": {"data": str(work / "data"), "outputs": str(work / "outputs")},
                      "data": {"transfer": []}})
    params = work / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(params)
    stage_function("ingest")(cfg)
    return StagePaths.of(cfg).dataset(cfg.data.source)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", default=[],
                        help='space-separated key=value overrides; the first is the baseline ("" = params.yaml)')
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--dataset", type=Path, default=None,
                        help="an ingested canonical data set (default: ingest Fashion-MNIST)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = parser.parse_args(argv)

    if args.one is not None:
        overrides = shlex.split(args.one) + [f"pretrain.epochs={args.epochs}"]
        cfg = load_config(ROOT / "params.yaml", overrides=overrides)
        print(json.dumps(pretrain_and_probe(cfg, args.dataset)), flush=True)
        return 0

    variants = args.variant or [""]
    dataset = args.dataset or ingest(Path(tempfile.mkdtemp(prefix="sweep-pretrain-")))
    results: list[dict | None] = [None] * len(variants)
    pending = list(enumerate(variants))
    running: list[tuple[int, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < args.parallel:
            i, variant = pending.pop(0)
            print(f"[sweep] start {i}: {variant or '(params.yaml)'}", flush=True)
            running.append((i, subprocess.Popen(
                [sys.executable, __file__, "--one", variant, "--epochs", str(args.epochs),
                 "--dataset", str(dataset)], stdout=subprocess.PIPE, text=True)))
        time.sleep(2)
        for i, proc in [r for r in running if r[1].poll() is not None]:
            running.remove((i, proc))
            lines = proc.stdout.read().strip().splitlines() if proc.stdout else []
            if proc.returncode != 0 or not lines:
                print(f"[sweep] variant {i} failed (exit {proc.returncode})", flush=True)
                continue
            results[i] = {"variant": variants[i], "epochs": args.epochs, **json.loads(lines[-1])}
            print(f"[sweep] done {i}: {json.dumps(results[i])}", flush=True)

    base = results[0]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as sink:
        for row in results:
            if row is None:
                continue
            if base is not None:
                row["linear_minus_baseline"] = row["linear_top1"] - base["linear_top1"]
                row["linear_ratio_to_baseline"] = row["linear_top1"] / base["linear_top1"]
            sink.write(json.dumps(row) + "\n")
            print(f"[sweep] {row['linear_top1']:.4f} linear ({row.get('linear_minus_baseline', 0):+.4f}"
                  f" vs baseline), kNN {row['knn_top1']:.4f}, {row['images_per_s']:.0f} img/s, "
                  f"h {row['feature_dim']}-d: {row['variant'] or '(params.yaml)'}")
    return 0 if all(r is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
