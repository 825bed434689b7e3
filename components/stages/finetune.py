"""Stage ``finetune``: SimCLR's semi-supervised protocol on the label subsets.

For each fraction in ``cfg.subsets.fractions``: the pretrained encoder plus a linear head,
trained on exactly the images of ``data/subsets/<tag>.txt`` (checked against the data set's
hash), evaluated on the full test split. Writes ``outputs/finetune/metrics.json``
(``finetune_<tag>_top1``, ``finetune_<tag>_top5``, ``finetune_<tag>_train_images``),
``history.json`` (per-epoch curves and the subset's index digest), ``curves.png`` and a
confusion matrix per subset. Protocol: :mod:`components.evaluation.finetune`.
"""

from __future__ import annotations

import logging

from components.config import PipelineConfig
from components.data.subsets import load_subset
from components.evaluation.finetune import finetune
from components.evaluation.inputs import load_pretrained_encoder, open_labelled_dataset
from components.evaluation.metrics import classification_metrics, confusion
from components.evaluation.plots import plot_confusion, plot_curves
from components.io import indices_sha256, write_json
from components.stage_api import StageContext, StagePaths, StageResult, subset_tag

log = logging.getLogger(__name__)


def run(cfg: PipelineConfig, ctx: StageContext) -> StageResult:
    out = ctx.out
    paths = StagePaths.of(cfg)
    encoder_path = paths.encoder
    load_pretrained_encoder(encoder_path, cfg.model)  # fail fast, before any training
    dataset = open_labelled_dataset(paths.dataset(cfg.data.source))
    train, test = dataset.split("train"), dataset.split("test")
    subsets = {subset_tag(f): load_subset(paths.subsets, f, dataset) for f in cfg.subsets.fractions}
    files = {subset_tag(f): paths.subset_file(f) for f in cfg.subsets.fractions}
    classes = dataset.classes
    metrics: dict[str, float] = {}
    timings: dict[str, float] = {}
    record: dict[str, dict] = {}
    artifacts = []
    for tag, indices in subsets.items():
        encoder, spec = load_pretrained_encoder(encoder_path, cfg.model)  # fresh copy per subset
        result = finetune(encoder, len(classes), train.images(indices), train.labels[indices], test,
                          cfg.evaluate.finetune, spec.in_channels, spec.image_size, seed=cfg.seed,
                          name=f"finetune {tag}", eval_batch_size=cfg.evaluate.batch_size)
        metrics.update(classification_metrics(result.test_scores, test.labels, f"finetune_{tag}"))
        metrics[f"images_finetune_{tag}"] = float(result.train_images)
        timings[f"seconds_finetune_{tag}"] = result.seconds
        record[tag] = {"subset_file": str(files[tag]),
                       "train_images": result.train_images, "indices_sha256": indices_sha256(indices),
                       "history": result.history}
        predictions = result.test_scores.argmax(axis=1)
        artifacts.append(plot_confusion(confusion(test.labels, predictions, len(classes)), classes,
                                        out / f"confusion_{tag}.png",
                                        f"Fine-tuned on {tag} labels: confusion (test)"))
    artifacts.append(plot_curves({tag: r["history"] for tag, r in record.items()},
                                 out / "curves.png", "SimCLR fine-tuning"))
    artifacts.append(write_json(out / "history.json", record))
    return StageResult(metrics=metrics, timings=timings, artifacts=artifacts,
                       history=[{"subset": tag, **row} for tag, r in record.items()
                                for row in r["history"]])
