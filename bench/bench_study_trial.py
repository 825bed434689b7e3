"""Cost of one study trial, and from it an estimate of every study's time under a preset.

Runs ONE trial body (:func:`components.studies.trial.run_trial`: the shared pretraining loop
in this process on one torch thread, then the validation probes) on Fashion-MNIST with the
preset's trial configuration, for ``--epochs`` epochs (fewer than the preset's, to keep the
measurement short), without Ray. It measures the CPU seconds per training image (the
``epoch_cpu_s`` of the loop's history: time lost to other jobs does not count, contention
does) and the probe's seconds, then estimates each study at the preset's scale:
trial cost = epochs x images x (CPU s per image) + probe (+ the z probe) + ``--overhead-s``
(Tune's per-trial start, checkpoint copies: not measured here), and the study's time = the
makespan of its trials in grid order on ``study.max_concurrent_trials`` slots (list
scheduling). The estimate assumes the per-image cost does not depend on the batch size or
the trial's ops (the identity branch of the augmentation study is cheaper than a real view,
so that study's estimate is high rather than low).

Writes ``bench/results/studies/trial_cost.json``.

Run: ``nice -n 19 .venv/bin/python bench/bench_study_trial.py [--preset study] [--epochs 2]
[--dataset data/datasets/fashion-mnist --subsets data/subsets]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.config import PipelineConfig, deep_merge, load_config  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "studies" / "trial_cost.json"


def prepare_data(work: Path, preset: str) -> tuple[Path, Path]:
    """Fashion-MNIST ingested and split (validation + label subsets) under ``work``."""
    from components.stage_api import StagePaths
    from components.stages.runner import stage_function

    raw = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()),
                     {"paths": {"data": str(work / "data"), "outputs": str(work / "outputs")},
                      "data": {"transfer": []}})
    params = work / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(params, str(ROOT / "presets" / f"{preset}.yaml"))
    stage_function("ingest")(cfg)
    stage_function("subsets")(cfg)
    paths = StagePaths.of(cfg)
    return paths.dataset(cfg.data.source), paths.subsets


def makespan(costs: list[float], slots: int) -> float:
    """Finish time of jobs taken in order by the first free of ``slots`` workers."""
    free = [0.0] * max(1, slots)
    for cost in costs:
        first = min(range(len(free)), key=free.__getitem__)
        free[first] += cost
    return max(free) if costs else 0.0


def estimate(cfg: PipelineConfig, cpu_per_image: float, probe_s: float, probe_z_s: float,
             overhead_s: float) -> dict[str, dict]:
    from components.studies.grids import STUDIES
    from components.studies.plan import StudyPlan

    slots = cfg.study.max_concurrent_trials or int(os.cpu_count() or 1)
    out = {}
    for name, study in STUDIES.items():
        plan = StudyPlan.of(study, cfg, content_hash="")
        costs = []
        for item in plan.trials:
            pre = item.config.pretrain
            images = (pre.max_images or 60_000) // pre.batch_size * pre.batch_size
            costs.append(pre.epochs * images * cpu_per_image + probe_s
                         + (probe_z_s if study.probe_z else 0.0) + overhead_s)
        out[name] = {"trials": len(costs), "trial_s_mean": sum(costs) / len(costs),
                     "trial_s_total": sum(costs), "slots": slots,
                     "study_minutes": makespan(costs, slots) / 60}
    return out


def report_estimate(cfg: PipelineConfig, measured: dict, overhead_s: float) -> dict:
    """:func:`estimate` from the two measured trials, printed one study a line."""
    probe_s = measured["h"]["probe_s"]
    probe_z_s = max(0.0, measured["h_and_z"]["probe_s"] - probe_s)
    studies = estimate(cfg, measured["h"]["cpu_s_per_image"], probe_s, probe_z_s, overhead_s)
    for name, row in studies.items():
        print(f"{name:16s} {row['trials']:3d} trials, {row['trial_s_mean']:6.0f} s per trial, "
              f"~{row['study_minutes']:5.1f} min on {row['slots']} slots", flush=True)
    return studies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="study")
    parser.add_argument("--epochs", type=int, default=2, help="epochs measured (default: 2)")
    parser.add_argument("--overhead-s", type=float, default=10.0,
                        help="per-trial Tune overhead assumed in the estimate (default: 10)")
    parser.add_argument("--dataset", type=Path, default=None)
    parser.add_argument("--subsets", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--estimate-only", action="store_true",
                        help="measure nothing: estimate from the measurement in --out (after a "
                             "change of the preset or the grids)")
    args = parser.parse_args(argv)
    if args.estimate_only:
        payload = json.loads(args.out.read_text())
        cfg = load_config(ROOT / "params.yaml", args.preset)
        payload["estimate"] = report_estimate(cfg, payload["measured"], args.overhead_s)
        payload.update(preset=args.preset, overhead_s_assumed=args.overhead_s)
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        return 0

    from components.studies.grids import study_named
    from components.studies.plan import StudyPlan
    from components.studies.trial import TrialJob, run_trial

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    if args.dataset is None:
        work = Path(tempfile.mkdtemp(prefix="bench-study-"))
        dataset, subsets = prepare_data(work, args.preset)
    else:
        dataset, subsets = args.dataset.resolve(), args.subsets.resolve()
    cfg = load_config(ROOT / "params.yaml", args.preset)
    results = {}
    for label, probe_z in (("h", False), ("h_and_z", True)):
        study = study_named("head" if probe_z else "temperature")
        plan = StudyPlan.of(study, cfg, content_hash="")
        item = plan.trials[-1]  # temperature: tau=1, no l2; head: the nonlinear head
        base = cfg.model_dump(mode="json")
        overrides = {**item.trial.overrides, "pretrain.epochs": args.epochs}
        job = TrialJob(study.name, item.trial.name, 1, 1, base, overrides, str(dataset),
                       str(subsets), probe_z)
        started = time.perf_counter()
        summary, _ = run_trial(job, job.config(), None, lambda metrics, state: None)
        m = summary["metrics"]
        images = sum(1 for _ in summary["history"]) * (
            job.config().pretrain.max_images // job.config().pretrain.batch_size
            * job.config().pretrain.batch_size)
        pre = job.config().pretrain
        results[label] = {"trial": item.trial.name, "epochs": args.epochs, "images": images,
                          "max_images": pre.max_images, "batch_size": pre.batch_size,
                          "pretrain_cpu_s": m["pretrain_cpu_s"],
                          "pretrain_wall_s": m["pretrain_wall_s"],
                          "cpu_s_per_image": m["pretrain_cpu_s"] / images,
                          "images_per_cpu_s": images / m["pretrain_cpu_s"],
                          "probe_s": m["evaluate_s"], "linear_val_top1": m["linear_val_top1"],
                          "wall_s": time.perf_counter() - started}
        print(json.dumps({label: results[label]}), flush=True)
    studies = report_estimate(cfg, results, args.overhead_s)
    payload = {"preset": args.preset, "measured": results, "estimate": studies,
               "overhead_s_assumed": args.overhead_s, "load_before": load_before,
               "load_after": os.getloadavg(), "machine": platform.machine(),
               "cpus": os.cpu_count(), "torch": torch.__version__,
               "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
