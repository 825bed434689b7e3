"""Stage ``baselines``: what SimCLR's numbers are compared against, on the same splits.

Every number comes in pairs: ``*_val_top1`` on the versioned validation split
(``data/subsets/val.txt``: what chose the L2 or the recipe) and ``*_top1/_top5`` on the test
split, scored once from the final model.

- ``random_linear_*``, ``random_knn_*``: the linear probe / kNN of the same encoder
  architecture, randomly initialised (seed ``cfg.seed``).
- ``pixels_linear_*``: the linear probe on raw pixels (scaled to [0, 1]).
- ``supervised_<tag>_*``: the same architecture trained from random init on the same label
  subset; ``supervised_100pct_*`` on every training label outside the validation split. Each
  tries every recipe of ``cfg.evaluate.supervised`` (``recipes`` for subsets, ``full_recipes``
  for 100%, epochs default ``evaluate.supervised_full_epochs``) under the fine-tuning budget
  rule and keeps the best on validation; ``epochs_/steps_/lr_/augment_supervised_<tag>``
  record the recipe kept, ``history.json`` every recipe tried.

Does not need the pretrained encoder; the input size and channels are the data set's. Runs on
``evaluate.device``, streamed from the store: no split is held as float (the probes' matrices
are bounded by ``evaluate.linear.max_elements``; ``images_pixels_linear`` records the pixel
probe's training rows).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from components.config import PipelineConfig, RecipeConfig
from components.data.subsets import load_subset, load_validation, without
from components.evaluation.device import EvalRuntime
from components.evaluation.features import FeatureCache, module_digest
from components.evaluation.finetune import choose_recipe, score
from components.evaluation.holdout import (
    HeldOutTest,
    PixelRows,
    SplitView,
    probe_indices,
    train_val_features,
    within_budget,
)
from components.evaluation.inputs import open_labelled_dataset, random_encoder
from components.evaluation.linear import evaluate_frozen
from components.evaluation.metrics import classification_metrics
from components.evaluation.plots import plot_curves
from components.io import write_json
from components.stage_api import StageContext, StagePaths, StageResult, subset_tag

log = logging.getLogger(__name__)


def run(cfg: PipelineConfig, ctx: StageContext) -> StageResult:
    out = ctx.out
    started = time.perf_counter()
    paths = StagePaths.of(cfg)
    dataset = open_labelled_dataset(paths.dataset(cfg.data.source))
    subsets = {subset_tag(f): load_subset(paths.subsets, f, dataset) for f in cfg.subsets.fractions}
    val_idx = load_validation(paths.subsets, dataset)
    train, test = dataset.split("train"), HeldOutTest(dataset)
    height, _, channels = dataset.image_shape
    classes = dataset.classes
    metrics: dict[str, float] = {}
    timings: dict[str, float] = {}

    # frozen baselines: random-init encoder (cached features) and raw pixels
    runtime = EvalRuntime.of(cfg)
    encoder = random_encoder(cfg.model, channels, height, cfg.seed)
    digest = module_digest(encoder, {"model": cfg.model.model_dump(mode="json"), "seed": cfg.seed,
                                     "in_channels": channels, "image_size": height})
    encoder = runtime.place(encoder)
    cache = FeatureCache(cfg.evaluate.cache_dir)
    lin = cfg.evaluate.linear
    fit = probe_indices(len(train), val_idx, lin.max_train_images, cfg.seed)
    probe_fit, probe_val = within_budget(fit, val_idx, int(encoder.feature_dim), lin.max_elements,
                                         cfg.seed)
    common = {"in_channels": channels, "image_size": height, "batch_size": cfg.evaluate.batch_size,
              "runtime": runtime}
    fit_h, val_h = train_val_features(cache, encoder, digest, dataset, probe_fit, probe_val, **common)
    test_h = cache.features(encoder, digest, dataset, "test", **common)
    metrics.update(evaluate_frozen(fit_h, train.labels[probe_fit], val_h, train.labels[probe_val],
                                   test_h, test, len(classes), cfg.evaluate, "random_linear",
                                   knn_name="random_knn_top1").metrics)
    del fit_h, val_h, test_h

    # raw pixels (H*W*C features): the fit / validation matrices within the probe budget, the
    # test split read and scored chunk by chunk
    pixel_fit, pixel_val = within_budget(fit, val_idx, int(np.prod(dataset.image_shape)),
                                         lin.max_elements, cfg.seed)
    metrics.update(evaluate_frozen(PixelRows(train, pixel_fit).array(), train.labels[pixel_fit],
                                   PixelRows(train, pixel_val).array(), train.labels[pixel_val],
                                   PixelRows(test), test, len(classes), cfg.evaluate,
                                   "pixels_linear").metrics)
    metrics["images_pixels_linear"] = float(len(pixel_fit))
    timings["seconds_baselines_frozen"] = time.perf_counter() - started

    # supervised from random init on the same label sets, recipe chosen on validation
    sup = cfg.evaluate.supervised
    full = [r.model_copy(update={"epochs": r.epochs or cfg.evaluate.supervised_full_epochs})
            for r in sup.full_recipes]
    label_sets: dict[str, tuple[np.ndarray, list[RecipeConfig]]] = {
        tag: (idx, sup.recipes) for tag, idx in subsets.items()}
    label_sets["100pct"] = (without(len(train), val_idx), full)
    val = SplitView(train, val_idx)
    record = {}
    for tag, (indices, recipes) in label_sets.items():
        best, tried = choose_recipe(
            SplitView(train, indices), recipes, lambda: random_encoder(cfg.model, channels, height, cfg.seed),
            len(classes), val, cfg.evaluate.finetune, channels, height, seed=cfg.seed,
            name=f"supervised {tag}", eval_batch_size=cfg.evaluate.batch_size, runtime=runtime)
        test_scores = score(best.model, test, channels, height, cfg.evaluate.batch_size, runtime)
        metrics[f"supervised_{tag}_val_top1"] = best.val_top1
        metrics.update(classification_metrics(test_scores, test.final_labels(), f"supervised_{tag}"))
        metrics[f"images_supervised_{tag}"] = float(best.train_images)
        metrics[f"epochs_supervised_{tag}"] = float(best.epochs)
        metrics[f"steps_supervised_{tag}"] = float(best.steps)
        metrics[f"lr_supervised_{tag}"] = float(best.recipe["lr"])
        metrics[f"augment_supervised_{tag}"] = float(best.recipe["augment"])
        timings[f"seconds_supervised_{tag}"] = sum(row["seconds"] for row in tried)
        record[tag] = {"recipes_tried": [{k: v for k, v in row.items() if k != "seconds"}
                                         for row in tried],
                       "chosen": best.recipe, "history": best.history}
        log.info("supervised %s: recipe %s (val top1 %.4f) -> test top1 %.4f", tag, best.recipe,
                 best.val_top1, metrics[f"supervised_{tag}_top1"])
    artifacts = [plot_curves({tag: r["history"] for tag, r in record.items()}, out / "curves.png",
                             "Supervised from random init (recipe chosen on validation)"),
                 write_json(out / "history.json", record)]
    return StageResult(metrics=metrics, timings=timings, artifacts=artifacts,
                       history=[{"subset": tag, **row} for tag, r in record.items()
                                for row in r["history"]])
