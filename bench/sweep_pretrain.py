"""Pretraining proxy sweep: short single-process SimCLR runs scored by a linear probe on h.

Each variant (a list of ``key=value`` overrides of ``params.yaml``) pretrains for
``--epochs`` epochs on Fashion-MNIST in ONE process with ONE torch thread (the per-worker
setting of the pipeline), through the pipeline's own training loop
(``components.training.local_runner``: the loop a Ray worker runs, with world 1), then fits
the linear-evaluation protocol of ``components.evaluation.linear`` on the 60k training images
(L2 chosen on a 10% validation carve of train) and scores the 10k test images once.
The first variant is the baseline: every later one prints its VALIDATION linear top-1 minus and
divided by the baseline's, all measured in the same run; variants are compared on validation
only, the test column is reported beside it and never used to pick a variant. Variants run ``--parallel`` at a time (one
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


def pretrain_and_probe(cfg: PipelineConfig, dataset_root: Path) -> dict:
    """Train ``cfg.pretrain.epochs`` epochs in this process; linear top-1 / kNN of the encoder.

    The pipeline's own loop (``components.training.loop`` via the single-process runner): the
    same model, data order, augmentation streams, step, schedule and seed (``cfg.seed``) as a
    Ray worker; no kNN monitor, no checkpoints.
    """
    from components.data.store import CanonicalDataset
    from components.evaluation.features import encode
    from components.evaluation.knn import knn_top1
    from components.evaluation.linear import fit_linear_probe
    from components.models.simclr import build_simclr_model
    from components.training.local_runner import run_local_pretraining

    torch.set_num_threads(1)
    dataset = CanonicalDataset(dataset_root)
    train, test = dataset.split("train"), dataset.split("test")
    height, _, channels = dataset.image_shape
    outcome = run_local_pretraining(cfg, dataset_root, log_every=10**9)
    for row in outcome.history:
        print(f"  epoch {row['epoch']}/{cfg.pretrain.epochs}: loss {row['loss']:.3f} "
              f"acc {row['contrastive_acc']:.3f} ({row['epoch_time_s']:.0f} s)", flush=True)
    train_seconds = sum(row["epoch_time_s"] for row in outcome.history)
    model = build_simclr_model(cfg.model, in_channels=channels, image_size=height)
    model.load_state_dict(outcome.model_state)

    train_h, test_h = (encode(model.encoder, split, None, channels, height) for split in (train, test))
    lin = cfg.evaluate.linear
    probe = fit_linear_probe(train_h, train.labels, len(dataset.classes), lin.l2_grid,
                             lin.val_fraction, lin.epochs, cfg.seed)
    linear = float((probe.scores(test_h).argmax(1) == test.labels).mean())
    knn = knn_top1(train_h, train.labels, test_h, test.labels, k=cfg.evaluate.knn.k,
                   temperature=cfg.evaluate.knn.temperature, num_classes=len(dataset.classes))
    images = outcome.history[-1]["step"] * cfg.pretrain.batch_size
    return {"feature_dim": int(train_h.shape[1]), "train_seconds": train_seconds,
            "images_per_s": images / train_seconds,
            "linear_val_top1": float(probe.val_accuracy[probe.l2]),
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
        overrides = shlex.split(args.one) + [f"pretrain.epochs={args.epochs}",
                                             "pretrain.knn_every=0"]
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
                # the comparison that chooses reads validation; test is reported only
                row["linear_val_minus_baseline"] = row["linear_val_top1"] - base["linear_val_top1"]
                row["linear_val_ratio_to_baseline"] = row["linear_val_top1"] / base["linear_val_top1"]
            sink.write(json.dumps(row) + "\n")
            print(f"[sweep] val {row['linear_val_top1']:.4f} linear "
                  f"({row.get('linear_val_minus_baseline', 0):+.4f} vs baseline), test "
                  f"{row['linear_top1']:.4f}, kNN {row['knn_top1']:.4f}, {row['images_per_s']:.0f} img/s, "
                  f"h {row['feature_dim']}-d: {row['variant'] or '(params.yaml)'}")
    return 0 if all(r is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
