"""Stage ``linear-eval``: linear probe and kNN on the frozen pretrained encoder's h.

Reads ``outputs/pretrain/encoder.pt`` and the canonical data set of ``cfg.data.source``;
features come from the feature cache (``cfg.evaluate.cache_dir``). Writes
``outputs/linear-eval/metrics.json``: on the versioned validation split (``data/subsets/val.txt``,
which chooses the L2) ``linear_val_top1`` and ``knn_val_top1``; on the test split, scored once
with the final probe, ``linear_top1``, ``linear_top5`` and ``knn_top1``; and ``l2_linear``.
Also a confusion matrix, per-class accuracy and a 2-D embedding map of test images.
Protocol: :mod:`components.evaluation.linear`. Features are extracted on ``evaluate.device``,
streamed from the store; the probe matrix is bounded by ``evaluate.linear.max_elements``.
"""

from __future__ import annotations

from components.config import PipelineConfig
from components.data.subsets import load_validation
from components.evaluation.device import EvalRuntime
from components.evaluation.features import FeatureCache
from components.evaluation.holdout import (
    HeldOutTest,
    probe_indices,
    train_val_features,
    within_budget,
)
from components.evaluation.inputs import load_pretrained_encoder, open_labelled_dataset
from components.evaluation.linear import evaluate_frozen
from components.evaluation.metrics import confusion, per_class_accuracy
from components.evaluation.plots import plot_confusion, plot_embedding, plot_per_class
from components.io import file_sha256
from components.stage_api import StageContext, StagePaths, StageResult


def run(cfg: PipelineConfig, ctx: StageContext) -> StageResult:
    out = ctx.out
    paths = StagePaths.of(cfg)
    encoder_path = paths.encoder
    runtime = EvalRuntime.of(cfg)
    encoder, spec = load_pretrained_encoder(encoder_path, cfg.model)
    encoder = runtime.place(encoder)
    dataset = open_labelled_dataset(paths.dataset(cfg.data.source))
    train, test = dataset.split("train"), HeldOutTest(dataset)
    val = load_validation(paths.subsets, dataset)
    fit = probe_indices(len(train), val, cfg.evaluate.linear.max_train_images, cfg.seed)
    fit, val = within_budget(fit, val, int(encoder.feature_dim),
                             cfg.evaluate.linear.max_elements, cfg.seed)
    cache = FeatureCache(cfg.evaluate.cache_dir)
    digest = file_sha256(encoder_path)
    common = {"in_channels": spec.in_channels, "image_size": spec.image_size,
              "batch_size": cfg.evaluate.batch_size, "runtime": runtime}
    fit_h, val_h = train_val_features(cache, encoder, digest, dataset, fit, val, **common)
    test_h = cache.features(encoder, digest, dataset, "test", **common)
    classes = dataset.classes
    result = evaluate_frozen(fit_h, train.labels[fit], val_h, train.labels[val], test_h, test,
                             len(classes), cfg.evaluate, "linear", knn_name="knn_top1")
    test_labels = test.final_labels()  # the probe is final: reporting only from here
    predictions = result.test_scores.argmax(axis=1)
    artifacts = [
        plot_confusion(confusion(test_labels, predictions, len(classes)), classes,
                       out / "confusion.png", "Linear evaluation: confusion (test)"),
        plot_per_class({"SimCLR linear probe": per_class_accuracy(test_labels, predictions, len(classes))},
                       classes, out / "per_class.png", "Linear evaluation: per-class accuracy"),
        plot_embedding(test_h, test_labels, classes, out / "embedding.png",
                       cfg.evaluate.embedding_method, cfg.evaluate.embedding_points, cfg.seed),
    ]
    metrics = dict(result.metrics)
    metrics["images_linear"] = float(len(fit))
    metrics["images_linear_val"] = float(len(val))
    return StageResult(metrics=metrics, artifacts=artifacts,
                       tags={"encoder_sha256": digest, "dataset_content_hash": dataset.content_hash,
                             "feature_cache_hits": str(cache.stats["hits"])})
