"""Streaming evaluation: device selection, the prefetching loader, the one batched forward, and
proof (a counting reader) that no evaluation path reads or converts a whole split at once."""

import numpy as np
import pytest
import torch

from components.config import FinetuneConfig, ModelConfig, config_from_dict
from components.errors import ConfigError
from components.evaluation.batches import ArrayRows, index_batches, stream
from components.evaluation.device import CPU, EvalRuntime, resolve_device
from components.evaluation.features import adapt_images, batched_forward
from components.evaluation.finetune import finetune, score
from components.evaluation.holdout import PixelRows, SplitView, within_budget
from components.evaluation.inputs import random_encoder
from components.evaluation.linear import fit_linear_probe
from tests.components.evaluation.helpers import FMNIST, SMALL_MODEL, write_fmnist, write_rgb16


class CountingRows:
    """A rows source that records how many rows each read asks for."""

    def __init__(self, source):
        self.source, self.reads = source, []

    def __len__(self):
        return len(self.source)

    @property
    def labels(self):
        return self.source.labels

    def images(self, indices=None):
        indices = np.arange(len(self)) if indices is None else np.asarray(indices)
        self.reads.append(len(indices))
        return self.source.images(indices)


def test_device_auto_is_cpu_without_cuda_and_cuda_is_checked():
    cuda = torch.cuda.is_available()
    assert resolve_device("auto") == torch.device("cuda" if cuda else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not cuda:
        with pytest.raises(ConfigError, match="evaluate.device"):
            resolve_device("cuda")
    cfg = config_from_dict({"evaluate": {"device": "cpu"}, "pretrain": {"precision": "bf16"}})
    runtime = EvalRuntime.of(cfg)
    assert runtime.device.type == "cpu" and runtime.bf16 and not runtime.channels_last
    assert config_from_dict({}).evaluate.device == "auto"
    with pytest.raises(ConfigError, match="evaluate.device"):
        config_from_dict({"evaluate": {"device": "tpu"}})


def test_stream_reads_ahead_in_order_and_stops_early():
    images = np.arange(10 * 2 * 2 * 1, dtype=np.uint8).reshape(10, 2, 2, 1)
    rows = CountingRows(ArrayRows(images, np.zeros(10)))
    order = np.array([3, 1, 4, 0, 5, 9, 2, 6, 8, 7])
    got = [batch.numpy() for batch in stream(rows, index_batches(order, 3), CPU.device)]
    assert [len(b) for b in got] == [3, 3, 3, 1] and rows.reads == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(got), images[order])
    for _ in stream(rows, index_batches(order, 1), CPU.device):
        break  # the reader thread ends (the loop would hang or leak otherwise)

    class Broken(ArrayRows):
        def images(self, indices=None):
            raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(stream(Broken(images, np.zeros(10)), index_batches(order, 4), CPU.device))


def test_batched_forward_equals_the_old_whole_batch_loop(tmp_path):
    dataset = write_rgb16(tmp_path / "rgb16", n_train=70, n_test=10)
    split = dataset.split("train")
    encoder = random_encoder(ModelConfig(**SMALL_MODEL), 1, 28, seed=0)
    indices = np.array([5, 3, 60, 0, 7, 69, 12])
    with torch.no_grad():  # the loop before the change: adapt on the CPU, then forward
        encoder.eval()
        old = torch.cat([encoder(adapt_images(split.images(indices[s:s + 3]), 1, 28))
                         for s in range(0, len(indices), 3)]).numpy()
    encoder.train()
    new = batched_forward(encoder, split, indices, CPU, 3, 1, 28)
    np.testing.assert_array_equal(new, old)
    assert encoder.training  # mode restored
    out = np.lib.format.open_memmap(tmp_path / "f.npy", "w+", np.float32, old.shape)
    assert batched_forward(encoder, split, indices, CPU, 2, 1, 28, out=out) is out
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), old)


@pytest.mark.skipif(not FMNIST.is_dir(), reason=f"{FMNIST} not present")
def test_finetune_and_scoring_stream_batches_never_the_split(tmp_path):
    """Counting reader: fine-tuning, BN recalibration, the validation curve and test scoring
    read at most one batch of rows per call from the store (the old code read the whole
    labelled set and converted it to float in one array)."""
    dataset = write_fmnist(tmp_path / "fmnist", n_train=260, n_test=40)
    train = dataset.split("train")
    labelled = CountingRows(SplitView(train, np.arange(200)))
    val, test = CountingRows(SplitView(train, np.arange(200, 260))), CountingRows(dataset.split("test"))
    cfg = FinetuneConfig(epochs=2, batch_size=16, augment=True, monitor_images=30)
    result = finetune(random_encoder(ModelConfig(**SMALL_MODEL), 1, 28, seed=0), 10, labelled,
                      labelled.labels, val, cfg, 1, 28, eval_batch_size=24)
    scores = score(result.model, test, 1, 28, batch_size=24)
    assert scores.shape == (40, 10) and result.train_images == 200
    assert max(labelled.reads) <= 24 and sum(labelled.reads) >= 2 * 200  # 2 epochs + BN pass
    assert max(val.reads) <= 24 and max(test.reads) <= 24


def test_probe_budget_and_pixel_rows_are_bounded():
    fit, val = np.arange(0, 900), np.arange(900, 1000)
    assert within_budget(fit, val, 10, 10_000, 0) == (fit, val)  # fits: unchanged
    small_fit, small_val = within_budget(fit, val, 100, 10_000, 0)  # 100 rows of 100 features
    assert len(small_fit) + len(small_val) == 100 and len(small_val) == 50
    assert set(small_fit) <= set(fit) and np.all(np.diff(small_fit) > 0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 4, 4, 3), dtype=np.uint8)
    labels = (images.reshape(300, -1).mean(1) > 127).astype(np.int64)
    rows = CountingRows(ArrayRows(images, labels))
    pixels = PixelRows(rows)
    probe = fit_linear_probe(pixels.array(), labels, 2, [1e-3], max_iter=20)
    rows.reads.clear()
    chunked = probe.scores(pixels, chunk_size=64)
    assert max(rows.reads) == 64  # test pixels read and scored chunk by chunk
    np.testing.assert_allclose(chunked, probe.scores(images.reshape(300, -1) / np.float32(255)),
                               rtol=1e-5, atol=1e-5)


def test_large_cache_entries_stay_on_disk_memory_mapped(tmp_path, monkeypatch):
    import components.evaluation.features as features
    from components.evaluation.features import FeatureCache

    dataset = write_rgb16(tmp_path / "rgb16", n_train=40, n_test=30)
    encoder = random_encoder(ModelConfig(**SMALL_MODEL), 1, 28, seed=0)
    in_memory = FeatureCache(tmp_path / "small").features(encoder, "d", dataset, "test", 1, 28)
    monkeypatch.setattr(features, "MEMMAP_ABOVE_BYTES", 0)  # every entry counts as large
    cache = FeatureCache(tmp_path / "large")
    written = cache.features(encoder, "d", dataset, "test", 1, 28, batch_size=8)
    again = cache.features(encoder, "d", dataset, "test", 1, 28)
    assert isinstance(written, np.memmap) and isinstance(again, np.memmap)
    assert cache.stats["hits"] == 1 and not list((tmp_path / "large").glob(".*"))
    np.testing.assert_array_equal(np.asarray(again), in_memory)
