"""Stage ``finetune``: SimCLR's semi-supervised protocol on the label subsets.

For each fraction in ``cfg.subsets.fractions``: the pretrained encoder plus a linear head,
trained on exactly the images of ``data/subsets/<tag>.txt`` (checked against the data set's
hash), monitored on the versioned validation split (``data/subsets/val.txt``), then the final
model scored once on the full test split. Writes ``outputs/finetune/metrics.json``
(``finetune_<tag>_val_top1``; test: ``finetune_<tag>_top1``, ``finetune_<tag>_top5``;
``images_finetune_<tag>``, ``epochs_finetune_<tag>``, ``steps_finetune_<tag>``),
``history.json`` (per-epoch curves on validation and the subset's index digest),
``curves.png`` and a confusion matrix per subset. Protocol: :mod:`components.evaluation.finetune`, on ``evaluate.device``, streamed from the
store (no split is held as float).
"""

from __future__ import annotations

import logging

from components.config import PipelineConfig
from components.data.subsets import load_subset, load_validation
from components.evaluation.device import EvalRuntime
from components.evaluation.finetune import finetune, score
from components.evaluation.holdout import HeldOutTest, SplitView
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
    train, test = dataset.split("train"), HeldOutTest(dataset)
    val = SplitView(train, load_validation(paths.subsets, dataset))
    subsets = {subset_tag(f): load_subset(paths.subsets, f, dataset) for f in cfg.subsets.fractions}
    files = {subset_tag(f): paths.subset_file(f) for f in cfg.subsets.fractions}
    classes = dataset.classes
    metrics: dict[str, float] = {}
    timings: dict[str, float] = {}
    record: dict[str, dict] = {}
    artifacts = []
    runtime = EvalRuntime.of(cfg)
    for tag, indices in subsets.items():
        encoder, spec = load_pretrained_encoder(encoder_path, cfg.model)  # fresh copy per subset
        labelled = SplitView(train, indices)  # streamed from the store, batch by batch
        result = finetune(encoder, len(classes), labelled, labelled.labels, val,
                          cfg.evaluate.finetune, spec.in_channels, spec.image_size, seed=cfg.seed,
                          name=f"finetune {tag}", eval_batch_size=cfg.evaluate.batch_size,
                          runtime=runtime)
        test_scores = score(result.model, test, spec.in_channels, spec.image_size,
                            cfg.evaluate.batch_size, runtime)
        test_labels = test.final_labels()  # the model is final: reporting only from here
        metrics[f"finetune_{tag}_val_top1"] = result.val_top1
        metrics.update(classification_metrics(test_scores, test_labels, f"finetune_{tag}"))
        metrics[f"images_finetune_{tag}"] = float(result.train_images)
        metrics[f"epochs_finetune_{tag}"] = float(result.epochs)
        metrics[f"steps_finetune_{tag}"] = float(result.steps)
        timings[f"seconds_finetune_{tag}"] = result.seconds
        record[tag] = {"subset_file": str(files[tag]),
                       "train_images": result.train_images, "indices_sha256": indices_sha256(indices),
                       "recipe": result.recipe, "history": result.history}
        predictions = test_scores.argmax(axis=1)
        artifacts.append(plot_confusion(confusion(test_labels, predictions, len(classes)), classes,
                                        out / f"confusion_{tag}.png",
                                        f"Fine-tuned on {tag} labels: confusion (test)"))
    artifacts.append(plot_curves({tag: r["history"] for tag, r in record.items()},
                                 out / "curves.png", "SimCLR fine-tuning"))
    artifacts.append(write_json(out / "history.json", record))
    return StageResult(metrics=metrics, timings=timings, artifacts=artifacts,
                       history=[{"subset": tag, **row} for tag, r in record.items()
                                for row in r["history"]])
