import pickle

import numpy as np
import pytest

from components.config import SourceConfig
from components.data.sources import ingest_sources
from components.errors import DataError
from tests.components.data.formats import write_cifar10, write_cifar100


def ingest(path, target, **kw):
    source = SourceConfig(kind="cifar", path=str(path), name="cifar", **kw)
    return ingest_sources([(source, target)], shard_size=5, split_seed=0)[0]


def test_cifar10_layout_pixels_labels_and_names(tmp_path):
    written = write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=6, batches=2)
    ds = ingest(tmp_path, tmp_path / "out")  # finds the standard subfolder
    assert ds.classes[:3] == ["airplane", "automobile", "bird"] and len(ds.classes) == 10
    assert ds.image_shape == (32, 32, 3)
    train_images = np.concatenate([written["data_batch_1"][0], written["data_batch_2"][0]])
    train_labels = np.concatenate([written["data_batch_1"][1], written["data_batch_2"][1]])
    assert np.array_equal(ds.split("train").images(), train_images)
    assert np.array_equal(ds.split("train").labels, train_labels)
    assert np.array_equal(ds.split("test").images(), written["test_batch"][0])
    # plane layout: the first 1024 values of a row are the red channel, row-major
    raw = written["test_batch"][0][0]
    assert raw[0, 1, 0] == ds.split("test").images([0])[0, 0, 1, 0]


def test_cifar100_uses_fine_labels_and_names(tmp_path):
    written = write_cifar100(tmp_path / "c100", n=8)
    ds = ingest(tmp_path / "c100", tmp_path / "out")
    assert len(ds.classes) == 100 and ds.classes[5] == "c05"
    assert np.array_equal(ds.split("train").labels, written["train"][1])
    assert len(ds.split("test")) == 8


def test_cifar_without_meta_uses_config_names_or_numbers(tmp_path):
    write_cifar10(tmp_path / "c", batches=1)
    (tmp_path / "c" / "batches.meta").unlink()
    assert ingest(tmp_path / "c", tmp_path / "a").classes == [str(i) for i in range(10)]
    names = [f"n{i}" for i in range(10)]
    assert ingest(tmp_path / "c", tmp_path / "b", classes=names).classes == names


def test_cifar_bad_inputs_are_named(tmp_path):
    folder = tmp_path / "c"
    write_cifar10(folder, batches=2)
    batch = folder / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(DataError, match=f"{batch}: not a readable CIFAR batch"):
        ingest(folder, tmp_path / "out")
    with batch.open("wb") as handle:
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}, handle)
    with pytest.raises(DataError, match=f"{batch}: 3 images but 2 labels"):
        ingest(folder, tmp_path / "out")
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match=f"{tmp_path / 'other'}: no CIFAR batch files"):
        ingest(tmp_path / "other", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


class _Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder = tmp_path / "c"
    write_cifar10(folder, batches=1)
    with (folder / "test_batch").open("wb") as handle:
        pickle.dump({b"data": _Boom(), b"labels": []}, handle)
    with pytest.raises(DataError, match="test_batch: .*builtins.print is not allowed"):
        ingest(folder, tmp_path / "out")
