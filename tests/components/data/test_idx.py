import gzip

import numpy as np
import pytest

from components.config import SourceConfig
from components.data.sources import ingest_sources
from components.errors import DataError
from tests.components.data.formats import random_idx_folder, write_idx

# sha256 content hash of the real Fashion-MNIST files as ingested (pixels, labels, class names,
# shape); it changes only if ingestion (order, dtype, layout) changes.
FASHION_MNIST_HASH = "bd37fda3c6f909f3e7a4284d74c216361bf23574edb98f23b210d79b334167ae"


def idx_source(path, **kw):
    return SourceConfig(kind="idx", path=str(path), name="small", **kw)


def ingest(source, target, seed=0, shard_size=16):
    return ingest_sources([(source, target)], shard_size=shard_size, split_seed=seed)[0]


def test_fashion_mnist_counts_shape_and_hash(fashion_mnist_dataset):
    ds = fashion_mnist_dataset
    assert ds.split_names == ["test", "train"]
    assert len(ds.split("train")) == 60_000 and len(ds.split("test")) == 10_000
    assert ds.manifest["splits"]["train"]["counts_per_class"] == [6000] * 10
    assert ds.manifest["splits"]["test"]["counts_per_class"] == [1000] * 10
    assert ds.image_shape == (28, 28, 1)
    assert ds.classes[0] == "T-shirt/top" and len(ds.classes) == 10
    assert len(ds.manifest["splits"]["train"]["shards"]) == 6
    assert ds.content_hash == FASHION_MNIST_HASH
    first = ds.split("train").images([0])
    assert first.dtype == np.uint8 and first.shape == (1, 28, 28, 1) and first.max() > 0


def test_gzip_and_raw_files_give_identical_data_sets(tmp_path):
    gz = ingest(idx_source(random_idx_folder(tmp_path / "gz", gz=True)), tmp_path / "a")
    raw = ingest(idx_source(random_idx_folder(tmp_path / "raw", gz=False)), tmp_path / "b")
    assert gz.content_hash == raw.content_hash
    assert len(gz.split("train")) == 40 and len(gz.split("test")) == 20
    assert gz.manifest["source"]["split"] == "source"


def test_pixels_and_labels_round_trip_in_order(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (30, 5, 7), dtype=np.uint8)
    labels = np.arange(30) % 3
    write_idx(tmp_path / "src", "train", images, labels)
    write_idx(tmp_path / "src", "t10k", images[:6], labels[:6])
    ds = ingest(idx_source(tmp_path / "src"), tmp_path / "out", shard_size=7)
    assert np.array_equal(ds.split("train").images()[..., 0], images)
    assert np.array_equal(ds.split("train").labels, labels)
    assert ds.classes == ["0", "1", "2"]


def test_train_files_only_get_a_seeded_stratified_split(tmp_path):
    folder = random_idx_folder(tmp_path / "src", n_train=40, n_test=0)
    a = ingest(idx_source(folder, test_fraction=0.25), tmp_path / "a", seed=5)
    b = ingest(idx_source(folder, test_fraction=0.25), tmp_path / "b", seed=5)
    c = ingest(idx_source(folder, test_fraction=0.25), tmp_path / "c", seed=6)
    assert a.manifest["splits"]["test"]["counts_per_class"] == [3] * 4  # round(0.25 * 10)
    assert a.manifest["splits"]["train"]["counts_per_class"] == [7] * 4
    assert a.content_hash == b.content_hash != c.content_hash
    assert a.manifest["source"]["split"] == "stratified" and a.manifest["source"]["split_seed"] == 5


def test_class_names_from_config_must_cover_the_labels(tmp_path):
    folder = random_idx_folder(tmp_path / "src", classes=4)
    ds = ingest(idx_source(folder, classes=["a", "b", "c", "d", "e"]), tmp_path / "ok")
    assert ds.classes == ["a", "b", "c", "d", "e"]
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: label 3 .* only 2 names"):
        ingest(idx_source(folder, classes=["a", "b"]), tmp_path / "bad")


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_image_file_is_named(tmp_path, gz):
    folder = random_idx_folder(tmp_path / "src", gz=gz)
    path = folder / f"train-images-idx3-ubyte{'.gz' if gz else ''}"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"{path}: truncated"):
        ingest(idx_source(folder), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_bad_magic_and_count_mismatch_are_named(tmp_path):
    folder = random_idx_folder(tmp_path / "src")
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(b"\x08\x08\x08\x01" + bytes(8)))
    with pytest.raises(DataError, match=f"{labels}: not an IDX file"):
        ingest(idx_source(folder), tmp_path / "out")
    write_idx(folder, "t10k", np.zeros((5, 6, 6), np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: 5 images but "
                                        "t10k-labels-idx1-ubyte.gz has 4 labels"):
        ingest(idx_source(folder), tmp_path / "out")


def test_trailing_bytes_and_wrong_dimensions_are_named(tmp_path):
    folder = random_idx_folder(tmp_path / "src", gz=False)
    labels = folder / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes() + b"\x00")
    with pytest.raises(DataError, match=f"{labels}: longer than its IDX header"):
        ingest(idx_source(folder), tmp_path / "out")
    labels.write_bytes(labels.read_bytes()[:-1])
    images = folder / "train-images-idx3-ubyte"
    images.write_bytes(bytes([0, 0, 8, 1]) + (40).to_bytes(4, "big") + bytes(40))
    with pytest.raises(DataError, match=f"{images}: IDX file has 1 dimensions, expected 3"):
        ingest(idx_source(folder), tmp_path / "out")


def test_folder_without_idx_files_or_missing_pair(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"{tmp_path / 'empty'}: no IDX files"):
        ingest(idx_source(tmp_path / "empty"), tmp_path / "out")
    folder = random_idx_folder(tmp_path / "src")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: its labels file is missing"):
        ingest(idx_source(folder), tmp_path / "out")
    with pytest.raises(DataError, match=f"{tmp_path / 'nope'}: source path not found"):
        ingest(idx_source(tmp_path / "nope"), tmp_path / "out")


def test_header_claiming_huge_sizes_ends_in_truncated_not_memory_error(tmp_path):
    folder = random_idx_folder(tmp_path / "src", gz=True)
    path = folder / "train-images-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + (40).to_bytes(4, "big") + (60000).to_bytes(4, "big") * 2
    path.write_bytes(gzip.compress(header + bytes(1000)))
    with pytest.raises(DataError, match=f"{path}: truncated"):
        ingest(idx_source(folder), tmp_path / "out")
