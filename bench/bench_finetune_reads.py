"""Fine-tuning time by how the training batches are read: prefetch thread, synchronous, in memory.

Times :func:`components.evaluation.finetune.finetune` on the embedded default's label subsets
(1% and 10% of Fashion-MNIST, ``evaluate.finetune`` of ``params.yaml``, the default encoder at
random init with seed 0: the same arithmetic as a pretrained one) in one fresh process per
variant, variants alternated ``--rounds`` times:

- ``thread``: today's code, batches read from the memory-mapped store by the prefetch thread of
  :func:`components.evaluation.batches.stream`;
- ``sync``: today's code with that stream replaced by synchronous reads (no thread);
- ``old``: the code of ``--old-tree`` (a worktree of 6e3def5, before streaming: the subset
  loaded whole and converted to float once), skipped when not given.

Every variant must give the same validation top-1 (same seed, same batches). Prints each fit's
seconds and the mean ratio against ``thread`` per subset.

Needs the ``ingest`` and ``subsets`` stages' outputs in ``--workdir`` (``simclr ingest`` and
``simclr subsets`` there). Run: ``.venv/bin/python bench/bench_finetune_reads.py --workdir W
--old-tree /tmp/old`` (writes ``bench/results/finetune_reads.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fit(variant: str, workdir: Path) -> dict[str, dict[str, float]]:
    """In this process: every subset's fine-tuning seconds and validation top-1."""
    import torch

    from components.config import load_config
    from components.data.subsets import load_subset, load_validation
    from components.evaluation import finetune as ft
    from components.evaluation.holdout import SplitView
    from components.evaluation.inputs import open_labelled_dataset
    from components.models.encoder import build_encoder
    from components.stage_api import StagePaths

    if variant == "sync":
        from components.evaluation import batches

        def synchronous(rows, index_batches, device, depth=2):  # noqa: ARG001 - stream's signature
            for batch in index_batches:
                yield batches._as_tensor(rows.images(batch), False).to(device)

        batches.stream = synchronous
    os.chdir(workdir)
    cfg = load_config(Path(ft.__file__).resolve().parents[2] / "params.yaml")
    paths = StagePaths.of(cfg)
    dataset = open_labelled_dataset(paths.dataset(cfg.data.source))
    train = dataset.split("train")
    val = SplitView(train, load_validation(paths.subsets, dataset))
    height, _, channels = dataset.image_shape
    results = {}
    for fraction in cfg.subsets.fractions:
        indices = load_subset(paths.subsets, fraction, dataset)
        torch.manual_seed(0)
        encoder = build_encoder(cfg.model, channels, height)
        started = time.perf_counter()
        if variant == "old":  # before streaming: uint8 arrays in, converted to float once
            result = ft.finetune(encoder, len(dataset.classes), train.images(indices),
                                 train.labels[indices], val, cfg.evaluate.finetune, channels,
                                 height, seed=0)
        else:
            labelled = SplitView(train, indices)
            result = ft.finetune(encoder, len(dataset.classes), labelled, labelled.labels, val,
                                 cfg.evaluate.finetune, channels, height, seed=0)
        results[f"{fraction:g}"] = {"seconds": time.perf_counter() - started,
                                    "val_top1": result.val_top1}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--old-tree", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/finetune_reads.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(fit(args.child, args.workdir.resolve())), flush=True)
        return 0
    variants = {"thread": ROOT, "sync": ROOT}
    if args.old_tree:
        variants["old"] = args.old_tree.resolve()
    load_before = os.getloadavg()[0]
    runs: list[dict] = []
    for round_ in range(args.rounds):
        for variant, tree in variants.items():
            out = subprocess.run(
                [sys.executable, __file__, "--workdir", str(args.workdir), "--child", variant],
                env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True,
                check=True).stdout
            result = json.loads(out.rsplit("RESULT ", 1)[1])
            runs.append({"round": round_ + 1, "variant": variant, **result})
            print(variant, round_ + 1, {k: round(v["seconds"], 1) for k, v in result.items()},
                  flush=True)
    subsets = [k for k in runs[0] if k not in ("round", "variant")]
    for subset in subsets:
        tops = {run[subset]["val_top1"] for run in runs}
        assert len(tops) == 1, f"{subset}: variants disagree on validation top-1: {tops}"
    mean = {v: {s: sum(r[s]["seconds"] for r in runs if r["variant"] == v) / args.rounds
                for s in subsets} for v in variants}
    for variant in variants:
        ratios = ", ".join(f"{s}: {mean[variant][s]:.1f} s ({mean[variant][s] / mean['thread'][s]:.2f}x)"
                           for s in subsets)
        print(f"{variant:>6}: {ratios}")
    args.out.write_text(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_before": load_before, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runs": runs, "mean_seconds": mean}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
