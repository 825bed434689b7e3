"""The engine-agnostic pretraining loop: data order, kNN sample, and the single-process runner.

Runs on sklearn's digits (8x8 px) so a whole run takes about a second; the Ray runner of the
same loop is tested in test_ray_driver.py.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from components.data.digits import digits_arrays
from components.data.store import CanonicalDataset, DatasetWriter
from components.training.local_runner import run_local_pretraining
from components.training.loop import EpochEnd, Hook, progress_logger, run_name_for
from components.training.monitor import knn_samples, monitor_split
from components.training.sampling import (
    epoch_permutation,
    local_batch_indices,
    step_generator,
    stratified_sample,
    training_subset,
)
from tests.components.training.conftest import digits_config
from tests.components.training.hooks import RecordEpochs


def _dataset(root: Path) -> Path:
    return root / "datasets" / "digits"


# ----------------------------------------------------------------------------- data order
def test_global_batches_do_not_depend_on_the_number_of_workers() -> None:
    perm = epoch_permutation(seed=3, epoch=5, n=100)
    assert np.array_equal(perm, epoch_permutation(seed=3, epoch=5, n=100))
    assert not np.array_equal(perm, epoch_permutation(seed=3, epoch=6, n=100))
    for step in range(100 // 32):  # the partial last batch is dropped by the caller
        whole = local_batch_indices(perm, step, 32, rank=0, world=1)
        halves = [local_batch_indices(perm, step, 32, rank=r, world=2) for r in range(2)]
        assert all(len(h) == 16 for h in halves)
        assert np.array_equal(whole, np.concatenate(halves))


def test_step_generator_is_a_function_of_seed_step_and_rank() -> None:
    def draw(*key: int) -> torch.Tensor:
        return torch.rand(4, generator=step_generator(*key))

    assert torch.equal(draw(0, 7, 1), draw(0, 7, 1))
    assert not torch.equal(draw(0, 7, 1), draw(0, 7, 0))
    assert not torch.equal(draw(0, 7, 1), draw(0, 8, 1))


def test_a_subset_seed_picks_a_seeded_sample_of_the_training_images() -> None:
    rows = training_subset(seed=7, count=100, available=1000)
    assert rows.dtype == np.int64 and len(np.unique(rows)) == 100 and rows.max() < 1000
    assert np.array_equal(rows, np.sort(rows))
    assert np.array_equal(rows, training_subset(7, 100, 1000))
    assert not np.array_equal(rows, training_subset(8, 100, 1000))
    assert not np.array_equal(rows, np.arange(100))
    # no seed, no cap, or a cap at least the split: the first rows (None)
    assert training_subset(None, 100, 1000) is None
    assert training_subset(7, None, 1000) is None and training_subset(7, 1000, 1000) is None


# ----------------------------------------------------------------------------- kNN sample
@pytest.fixture(scope="module")
def class_sorted_store(tmp_path_factory: pytest.TempPathFactory) -> CanonicalDataset:
    """Digits sorted by class in every split, as an image-folder ingest orders them."""
    images, labels = digits_arrays()
    order = np.argsort(labels, kind="stable")
    images, labels = images[order], labels[order]
    root = tmp_path_factory.mktemp("sorted") / "digits"
    thirds = np.arange(len(labels)) % 3  # every class in every split, each split class-sorted
    with DatasetWriter(root, "digits", [str(i) for i in range(10)], shard_size=500) as writer:
        for split, part in (("train", 0), ("val", 1), ("test", 2)):
            writer.add(split, images[thirds == part], labels[thirds == part])
        return writer.commit(source={"kind": "digits", "order": "by class"})


def test_knn_sample_covers_every_class_of_a_class_sorted_store(
        class_sorted_store: CanonicalDataset, tmp_path: Path) -> None:
    cfg = digits_config(tmp_path, tmp_path, pretrain={"knn_images": 100})
    assert monitor_split(class_sorted_store) == "val"  # held out; never the test split
    bank, queries = knn_samples(class_sorted_store, cfg)
    train, val = class_sorted_store.split("train"), class_sorted_store.split("val")
    for indices, split in ((bank, train), (queries, val)):
        assert abs(len(indices) - 100) <= 10  # per-class rounding
        counts = np.bincount(split.labels[indices], minlength=10)
        assert counts.min() >= 8 and counts.max() <= 12, counts  # ~10 of each class
    assert np.array_equal(bank, knn_samples(class_sorted_store, cfg)[0])  # seeded
    assert not np.array_equal(bank[:100], np.arange(100))  # not the first rows
    first_rows = np.unique(train.labels[:100])
    assert len(first_rows) <= 2  # what the old "first knn_images rows" monitor saw


def test_the_monitor_never_reads_the_test_split(tmp_path: Path) -> None:
    """A store without ``val`` (Fashion-MNIST's): queries are training rows off the bank; the
    monitor runs with the test split's files gone."""
    import shutil

    from components.models.encoder import build_encoder
    from components.training.monitor import knn_monitor

    images, labels = digits_arrays()
    root = tmp_path / "digits"
    with DatasetWriter(root, "digits", [str(i) for i in range(10)], shard_size=500) as writer:
        writer.add("train", images[:1200], labels[:1200])
        writer.add("test", images[1200:], labels[1200:])
        store = writer.commit(source={"kind": "digits"})
    cfg = digits_config(tmp_path, tmp_path, pretrain={"knn_images": 200})
    assert monitor_split(store) == "train"
    bank, queries = knn_samples(store, cfg)
    assert len(np.intersect1d(bank, queries)) == 0 and queries.max() < 1200
    assert np.bincount(store.split("train").labels[queries], minlength=10).min() >= 15
    shutil.rmtree(root / "test")
    encoder = build_encoder(cfg.model, 1, store.image_shape[0])
    assert 0.0 <= knn_monitor(encoder, CanonicalDataset(root), cfg) <= 1.0


def test_stratified_sample_takes_everything_when_asked_for_more() -> None:
    labels = np.repeat(np.arange(3), 4)
    assert np.array_equal(stratified_sample(labels, 50, seed=0), np.arange(12))
    picked = stratified_sample(labels, 6, seed=0)
    assert np.bincount(labels[picked]).tolist() == [2, 2, 2]


# ----------------------------------------------------------------------------- local runner
class FailAfter(Hook):
    """Raises after epoch ``epoch`` (its checkpoint is written first): an interrupted run."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, end: EpochEnd) -> None:
        if end.epochs_done == self.epoch:
            raise KeyboardInterrupt(f"stopped after epoch {end.epochs_done}")


def test_single_process_runner_trains_reports_and_calls_hooks(
        digits_root: Path, tmp_path: Path) -> None:
    cfg = digits_config(digits_root, tmp_path, pretrain={"epochs": 3, "checkpoint_every": 2,
                                                         "knn_every": 2})
    log = tmp_path / "hooks.log"
    outcome = run_local_pretraining(cfg, _dataset(digits_root), hooks=[RecordEpochs(log)],
                                    checkpoint_dir=tmp_path / "ckpt")
    history = outcome.history
    assert [row["step"] for row in history] == [8, 16, 24]  # 512 images / 64
    assert ["pretrain_monitor_knn_top1" in row for row in history] == [False, True, True]  # every 2 and the last
    assert all(0.0 <= row["pretrain_monitor_knn_top1"] <= 1.0 for row in history if "pretrain_monitor_knn_top1" in row)
    assert history[-1]["loss"] < history[0]["loss"]
    assert log.read_text().splitlines() == ["built SimCLRModel", "0 1 0", "0 2 1", "0 3 1"]
    run_dir = tmp_path / "ckpt" / outcome.run_name
    assert sorted(p.name for p in run_dir.glob("epoch-*")) == ["epoch-00002", "epoch-00003"]
    assert Path(outcome.checkpoint_path) == run_dir / "epoch-00003"
    assert {k.split(".")[0] for k in outcome.model_state} == {"encoder", "head"}


def test_single_process_runner_resumes_to_the_uninterrupted_result(
        digits_root: Path, tmp_path: Path) -> None:
    cfg = digits_config(digits_root, tmp_path, pretrain={"epochs": 3, "knn_every": 0})
    whole = run_local_pretraining(cfg, _dataset(digits_root))
    with pytest.raises(KeyboardInterrupt, match="after epoch 1"):
        run_local_pretraining(cfg, _dataset(digits_root), hooks=[FailAfter(1)],
                              checkpoint_dir=tmp_path / "ckpt")
    resumed = run_local_pretraining(cfg, _dataset(digits_root), checkpoint_dir=tmp_path / "ckpt")
    assert [row["resumed_from"] for row in resumed.history] == [0, 1, 1]
    assert [row["loss"] for row in resumed.history] == [row["loss"] for row in whole.history]
    for key, value in whole.model_state.items():
        assert torch.equal(resumed.model_state[key], value), key


def test_a_caller_restores_and_receives_every_epoch_itself(
        digits_root: Path, tmp_path: Path) -> None:
    """``restored`` and ``report`` (what a Ray Tune trial passes): every epoch's row reaches
    the caller with the state on checkpoint epochs, and a run resumed from a handed state
    ends where the uninterrupted one does."""
    cfg = digits_config(digits_root, tmp_path, pretrain={"epochs": 3, "knn_every": 0,
                                                         "checkpoint_every": 2})
    seen: list[tuple[int, int | None]] = []
    states = {}

    def report(metrics, state):
        seen.append((int(metrics["epoch"]), state.epoch if state else None))
        if state is not None:  # the live model's tensors: keep a copy, as a checkpoint does
            states[state.epoch] = copy.deepcopy(state)

    whole = run_local_pretraining(cfg, _dataset(digits_root), report=report)
    assert seen == [(1, None), (2, 2), (3, 3)]
    resumed = run_local_pretraining(cfg, _dataset(digits_root), restored=states[2])
    assert [row["resumed_from"] for row in resumed.history] == [0, 0, 2]
    assert resumed.history[-1]["loss"] == whole.history[-1]["loss"]
    for key, value in whole.model_state.items():
        assert torch.equal(resumed.model_state[key], value), key


def test_a_subset_seed_and_an_asymmetric_view_are_other_runs(
        digits_root: Path, tmp_path: Path) -> None:
    """``pretrain.subset_seed`` trains on other images and ``augment.second_view_ops`` on
    other views: other losses, other run names."""
    content_hash = CanonicalDataset(_dataset(digits_root)).content_hash
    short = {"epochs": 1, "knn_every": 0, "max_images": 256}
    base = digits_config(digits_root, tmp_path, pretrain=short)
    first = run_local_pretraining(base, _dataset(digits_root)).history[0]["loss"]
    for sections in ({"pretrain": {**short, "subset_seed": 3}},
                     {"pretrain": short, "augment": {"second_view_ops": []}}):
        cfg = digits_config(digits_root, tmp_path, **sections)
        outcome = run_local_pretraining(cfg, _dataset(digits_root))
        assert outcome.history[0]["loss"] != first, sections
        assert outcome.run_name != run_name_for(base, content_hash), sections


def test_the_loop_trains_with_the_configured_loss(
        digits_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``pretrain.loss`` reaches the train step, and a non-default loss is another run."""
    import components.training.step as step_module

    names = []
    real_loss = step_module.contrastive_loss_with_accuracy

    def observed(z1: torch.Tensor, z2: torch.Tensor, name: str, **kwargs):
        names.append((name, kwargs["l2_normalize"], kwargs["margin"]))
        return real_loss(z1, z2, name, **kwargs)

    monkeypatch.setattr(step_module, "contrastive_loss_with_accuracy", observed)
    loss = {"name": "margin_triplet", "l2_normalize": False, "margin": 0.5}
    cfg = digits_config(digits_root, tmp_path, pretrain={"epochs": 1, "knn_every": 0,
                                                         "loss": loss})
    outcome = run_local_pretraining(cfg, _dataset(digits_root))
    assert names == [("margin_triplet", False, 0.5)] * 8  # 512 images / 64
    assert len(outcome.history) == 1 and np.isfinite(outcome.history[0]["loss"])
    default = digits_config(digits_root, tmp_path, pretrain={"epochs": 1, "knn_every": 0})
    assert outcome.run_name != run_name_for(default, CanonicalDataset(
        _dataset(digits_root)).content_hash)


def test_one_progress_line_in_mid_epoch_and_one_when_the_epoch_is_done(
        digits_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """7 steps per epoch (an odd count): one line at step 4 of 7, then the epoch's done line."""
    cfg = digits_config(digits_root, tmp_path, pretrain={"epochs": 2, "max_images": 448,
                                                         "knn_every": 0})
    logger = progress_logger()  # its own handler and level, no propagation
    logger.addHandler(caplog.handler)
    try:
        run_local_pretraining(cfg, _dataset(digits_root))
    finally:
        logger.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records if r.name == logger.name]
    progress = [line.split(" loss")[0] for line in lines if line.startswith("epoch ")]
    assert progress == ["epoch 1/2 step 4/14", "epoch 1/2 done: step 7/14",
                        "epoch 2/2 step 11/14", "epoch 2/2 done: step 14/14"], lines
