"""Stage ``transfer``: the pretrained encoder on other data sets (``cfg.data.transfer``).

For each transfer source (ingested to ``data/transfer/<name>``): images are adapted to the
encoder's input (bilinear resize, RGB <-> grey), then the linear probe of the frozen encoder
(``transfer_<name>_top1/_top5``) next to the same probe on a randomly initialised encoder of
the same architecture (``random_transfer_<name>_top1/_top5``), each with its ``*_val_top1``.
A transfer data set has no versioned validation split: the probe's L2 is chosen on a seeded,
stratified ``evaluate.linear.val_fraction`` of its training split (the same rule as
``data/subsets/val.txt``); its test split is scored once, by the final probe. With
``cfg.evaluate.transfer_finetune`` also fine-tuning on the transfer training split
(``transfer_<name>_finetune_top1``) against training from random init
(``supervised_transfer_<name>_top1``). Writes ``outputs/transfer/metrics.json`` and a
confusion matrix per data set. Everything runs on ``evaluate.device``, streamed from the store.
"""

from __future__ import annotations

import logging

from components.config import PipelineConfig
from components.data.subsets import validation_indices, without
from components.evaluation.device import EvalRuntime
from components.evaluation.features import FeatureCache, module_digest
from components.evaluation.finetune import finetune, score
from components.evaluation.holdout import (
    HeldOutTest,
    SplitView,
    probe_indices,
    train_val_features,
    within_budget,
)
from components.evaluation.inputs import (
    load_pretrained_encoder,
    open_labelled_dataset,
    random_encoder,
)
from components.evaluation.linear import evaluate_frozen
from components.evaluation.metrics import confusion
from components.evaluation.plots import plot_confusion
from components.io import file_sha256
from components.stage_api import StageContext, StagePaths, StageResult, metric_slug

log = logging.getLogger(__name__)


def run(cfg: PipelineConfig, ctx: StageContext) -> StageResult:
    out = ctx.out
    paths = StagePaths.of(cfg)
    if not cfg.data.transfer:
        log.info("transfer: no data sets under data.transfer; nothing to evaluate")
        return StageResult()
    encoder_path = paths.encoder
    runtime = EvalRuntime.of(cfg)
    encoder, spec = load_pretrained_encoder(encoder_path, cfg.model)
    baseline = random_encoder(spec.model, spec.in_channels, spec.image_size, cfg.seed)
    encoders = {
        "transfer": (encoder, file_sha256(encoder_path)),
        "random_transfer": (baseline, module_digest(baseline, {"seed": cfg.seed, "in_channels":
                            spec.in_channels, "image_size": spec.image_size})),
    }  # digests first (of the CPU copies), then each model moves to the evaluation device
    encoders = {prefix: (runtime.place(model), digest) for prefix, (model, digest) in encoders.items()}
    datasets = {source.name: open_labelled_dataset(paths.transfer_dataset(source))
                for source in cfg.data.transfer}  # check every data set before any work
    cache = FeatureCache(cfg.evaluate.cache_dir)
    common = {"in_channels": spec.in_channels, "image_size": spec.image_size,
              "batch_size": cfg.evaluate.batch_size, "runtime": runtime}
    metrics: dict[str, float] = {}
    artifacts = []
    for name, dataset in datasets.items():
        slug = metric_slug(name)
        train, test = dataset.split("train"), HeldOutTest(dataset)
        classes = dataset.classes
        val_idx = validation_indices(train.labels, cfg.evaluate.linear.val_fraction, cfg.seed)
        fit = probe_indices(len(train), val_idx, cfg.evaluate.linear.max_train_images, cfg.seed)
        probe_fit, probe_val = within_budget(fit, val_idx, int(encoder.feature_dim),
                                             cfg.evaluate.linear.max_elements, cfg.seed)
        log.info("transfer %s: %d train / %d val / %d test images %s -> encoder input %dx%dx%d",
                 name, len(fit), len(val_idx), len(test), dataset.image_shape, spec.image_size,
                 spec.image_size, spec.in_channels)
        for prefix, (model, digest) in encoders.items():
            fit_h, val_h = train_val_features(cache, model, digest, dataset, probe_fit, probe_val,
                                              **common)
            test_h = cache.features(model, digest, dataset, "test", **common)
            result = evaluate_frozen(fit_h, train.labels[probe_fit], val_h, train.labels[probe_val],
                                     test_h,
                                     test, len(classes), cfg.evaluate, f"{prefix}_{slug}")
            metrics.update(result.metrics)
            if prefix == "transfer":
                predictions = result.test_scores.argmax(axis=1)
                artifacts.append(plot_confusion(
                    confusion(test.final_labels(), predictions, len(classes)), classes,
                    out / f"confusion_{slug}.png", f"Transfer linear eval on {name}: confusion"))
        if cfg.evaluate.transfer_finetune:
            rest = SplitView(train, without(len(train), val_idx))
            val = SplitView(train, val_idx)
            runs = {f"transfer_{slug}_finetune": load_pretrained_encoder(encoder_path, cfg.model)[0],
                    f"supervised_transfer_{slug}": random_encoder(spec.model, spec.in_channels,
                                                                  spec.image_size, cfg.seed)}
            for prefix, model in runs.items():
                tuned = finetune(model, len(classes), rest, rest.labels, val,
                                 cfg.evaluate.finetune, spec.in_channels, spec.image_size,
                                 seed=cfg.seed, name=prefix, eval_batch_size=cfg.evaluate.batch_size,
                                 runtime=runtime)
                test_scores = score(tuned.model, test, spec.in_channels, spec.image_size,
                                    cfg.evaluate.batch_size, runtime)
                metrics[f"{prefix}_val_top1"] = tuned.val_top1
                metrics[f"{prefix}_top1"] = float((test_scores.argmax(1) == test.final_labels()).mean())
    return StageResult(metrics=metrics, artifacts=artifacts,
                       tags={f"transfer.{name}.content_hash": ds.content_hash
                             for name, ds in datasets.items()})
