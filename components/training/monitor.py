"""kNN monitor of a pretraining run: top-1 of a weighted cosine kNN on the representation h.

Bank: a seeded, class-stratified sample of ``knn_images`` training images; queries: a seeded,
class-stratified sample of as many images of the store's ``val`` split when it has one, else of
the training images not in the bank. Never the test split: the test split is scored once, by
the evaluation stages. (Training rows are no less held out than ``data/subsets/val.txt``, which
is carved from the same training split the encoder pretrains on, unlabelled.) Stratified,
because image-folder stores are sorted by class: the first rows of such a store hold one or two
classes and would report near 100%.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from components.config import PipelineConfig
from components.data.store import CanonicalDataset
from components.training.sampling import stratified_sample


def monitor_split(dataset: CanonicalDataset) -> str:
    """The split the monitor queries: ``val`` if present, else ``train`` (rows off the bank)."""
    return "val" if "val" in dataset.split_names else "train"


def knn_samples(dataset: CanonicalDataset, cfg: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    """(bank indices into ``train``, query indices into :func:`monitor_split`), both sorted;
    queries from ``train`` never repeat a bank row."""
    count, seed = cfg.pretrain.knn_images, cfg.seed
    train = dataset.split("train")
    bank = stratified_sample(train.labels, count, seed)
    if monitor_split(dataset) == "val":
        return bank, stratified_sample(dataset.split("val").labels, count, seed + 1)
    rest = np.setdiff1d(np.arange(len(train)), bank)
    return bank, rest[stratified_sample(train.labels[rest], count, seed + 1)]


def knn_monitor(encoder: nn.Module, dataset: CanonicalDataset, cfg: PipelineConfig) -> float:
    """kNN top-1 (k = ``cfg.pretrain.knn_k``) of ``encoder`` on the samples of :func:`knn_samples`.

    Runs the encoder in eval mode on its own (the training worker's) device, in the pretraining
    numeric format, through the one batched forward
    (:func:`components.evaluation.features.batched_forward`, streamed from the store), and
    restores its mode.
    """
    from components.evaluation.device import EvalRuntime
    from components.evaluation.features import batched_forward
    from components.evaluation.knn import knn_top1

    height, _, channels = dataset.image_shape
    bank, queries = knn_samples(dataset, cfg)
    train, queried = dataset.split("train"), dataset.split(monitor_split(dataset))
    runtime = EvalRuntime.of(cfg, next(encoder.parameters()).device)
    common = (runtime, cfg.evaluate.batch_size, channels, height)
    bank_h = batched_forward(encoder, train, bank, *common)
    query_h = batched_forward(encoder, queried, queries, *common)
    return knn_top1(bank_h, train.labels[bank], query_h, queried.labels[queries],
                    k=cfg.pretrain.knn_k, temperature=cfg.evaluate.knn.temperature,
                    num_classes=len(dataset.classes))
