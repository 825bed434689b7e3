"""Stage ``baselines``: what SimCLR's numbers are compared against, on the same splits.

- ``random_linear_top1/_top5``, ``random_knn_top1``: the linear probe / kNN of the same encoder
  architecture, randomly initialised (seed ``cfg.seed``).
- ``pixels_linear_top1/_top5``: the linear probe on raw pixels (scaled to [0, 1]).
- ``supervised_<tag>_top1/_top5``: the same architecture trained from random init with the
  fine-tuning recipe on the same label subsets; ``supervised_100pct_*`` on every training
  label for ``cfg.evaluate.supervised_full_epochs`` epochs.

Does not need the pretrained encoder; the input size and channels are the data set's.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from components.config import PipelineConfig
from components.data.subsets import load_subset
from components.evaluation.features import FeatureCache, module_digest
from components.evaluation.finetune import finetune
from components.evaluation.inputs import open_labelled_dataset, random_encoder, subsample
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
    train, test = dataset.split("train"), dataset.split("test")
    height, _, channels = dataset.image_shape
    classes = dataset.classes
    metrics: dict[str, float] = {}
    timings: dict[str, float] = {}

    # frozen baselines: random-init encoder (cached features) and raw pixels
    encoder = random_encoder(cfg.model, channels, height, cfg.seed)
    digest = module_digest(encoder, {"model": cfg.model.model_dump(mode="json"), "seed": cfg.seed,
                                     "in_channels": channels, "image_size": height})
    cache = FeatureCache(cfg.evaluate.cache_dir)
    train_idx = subsample(len(train), cfg.evaluate.linear.max_train_images, cfg.seed)
    train_y = train.labels if train_idx is None else train.labels[train_idx]
    common = {"in_channels": channels, "image_size": height, "batch_size": cfg.evaluate.batch_size}
    train_h = cache.features(encoder, digest, dataset, "train", indices=train_idx, **common)
    test_h = cache.features(encoder, digest, dataset, "test", **common)
    metrics.update(evaluate_frozen(train_h, train_y, test_h, test.labels, len(classes), cfg.evaluate,
                                   "random_linear", cfg.seed, knn_name="random_knn_top1").metrics)
    pixels_train = train.images(train_idx).reshape(len(train_y), -1).astype(np.float32) / 255.0
    pixels_test = test.images().reshape(len(test), -1).astype(np.float32) / 255.0
    metrics.update(evaluate_frozen(pixels_train, train_y, pixels_test, test.labels, len(classes),
                                   cfg.evaluate, "pixels_linear", cfg.seed).metrics)
    del pixels_train, pixels_test
    timings["seconds_baselines_frozen"] = time.perf_counter() - started

    # supervised from random init on the same label sets
    label_sets = {tag: (idx, None) for tag, idx in subsets.items()}
    label_sets["100pct"] = (np.arange(len(train)), cfg.evaluate.supervised_full_epochs)
    histories = {}
    for tag, (indices, epochs) in label_sets.items():
        model = random_encoder(cfg.model, channels, height, cfg.seed)
        result = finetune(model, len(classes), train.images(indices), train.labels[indices], test,
                          cfg.evaluate.finetune, channels, height, seed=cfg.seed, epochs=epochs,
                          name=f"supervised {tag}", eval_batch_size=cfg.evaluate.batch_size)
        metrics.update(classification_metrics(result.test_scores, test.labels, f"supervised_{tag}"))
        metrics[f"images_supervised_{tag}"] = float(result.train_images)
        timings[f"seconds_supervised_{tag}"] = result.seconds
        histories[tag] = result.history
    artifacts = [plot_curves(histories, out / "curves.png", "Supervised from random init"),
                 write_json(out / "history.json", histories)]
    return StageResult(metrics=metrics, timings=timings, artifacts=artifacts,
                       history=[{"subset": tag, **row} for tag, rows in histories.items() for row in rows])
