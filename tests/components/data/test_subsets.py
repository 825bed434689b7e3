import json

import numpy as np
import pytest

from components.config import SourceConfig
from components.data.sources import ingest_sources
from components.data.subsets import (
    balanced_subsets,
    load_subset,
    load_validation,
    per_class_count,
    read_subset,
    subset_tag,
    write_subsets,
)
from components.errors import DataError


def test_per_class_rule():
    assert per_class_count(0.01, 60_000, 10) == 60
    assert per_class_count(0.1, 60_000, 10) == 600
    assert per_class_count(0.01, 1437, 10) == 1  # 1.437 rounds to 1
    assert per_class_count(0.001, 100, 10) == 1  # never zero
    assert per_class_count(0.05, 1500, 10) == 8  # 7.5 rounds half up


def test_balanced_subsets_exact_nested_and_seeded():
    labels = np.repeat(np.arange(5), [50, 60, 70, 80, 3])
    subsets = balanced_subsets(labels, 5, [0.05, 0.2], seed=7)
    small, large = subsets[0.05], subsets[0.2]
    # 0.05 * 263 / 5 = 2.63 -> 3 per class; 0.2 * 263 / 5 = 10.52 -> 11, capped at 3 for class 4
    assert np.bincount(labels[small], minlength=5).tolist() == [3, 3, 3, 3, 3]
    assert np.bincount(labels[large], minlength=5).tolist() == [11, 11, 11, 11, 3]
    assert set(small) <= set(large)
    assert np.all(np.diff(large) > 0)
    again = balanced_subsets(labels, 5, [0.05, 0.2], seed=7)
    assert all(np.array_equal(subsets[f], again[f]) for f in subsets)
    assert not np.array_equal(balanced_subsets(labels, 5, [0.2], seed=8)[0.2], large)


def test_a_class_without_training_images_is_refused():
    with pytest.raises(DataError, match=r"no images of class\(es\) \[2\]"):
        balanced_subsets(np.array([0, 0, 1, 1]), 3, [0.5], seed=0)


def test_tags_name_the_subset_files_of_stage_paths():
    from components.config import PipelineConfig
    from components.stage_api import StagePaths

    paths = StagePaths.of(PipelineConfig())
    for fraction, tag in ((0.01, "1pct"), (0.1, "10pct"), (0.005, "0.5pct"), (1.0, "100pct")):
        assert subset_tag(fraction) == tag and paths.subset_file(fraction).name == f"{tag}.txt"


@pytest.fixture
def small_dataset(tmp_path):
    source = SourceConfig(kind="digits", path=None, name="digits")
    return ingest_sources([(source, tmp_path / "ds")], shard_size=1000, split_seed=0)[0]


def test_write_and_read_subsets(tmp_path, small_dataset):
    folder = tmp_path / "subsets"
    manifest = write_subsets(folder, small_dataset, [0.1, 0.5], seed=0)
    train = small_dataset.split("train")
    assert sorted(p.name for p in folder.iterdir()) == ["10pct.txt", "50pct.txt", "manifest.json",
                                                        "val.txt"]
    assert json.loads((folder / "manifest.json").read_text()) == manifest
    assert manifest["content_hash"] == small_dataset.content_hash
    entry = manifest["subsets"]["10pct"]
    indices = read_subset(folder / "10pct.txt", len(train))
    assert entry["count"] == len(indices) == 140  # round(0.1 * 1438 / 10) = 14 per class
    assert entry["counts_per_class"] == [14] * 10
    assert np.bincount(train.labels[indices]).tolist() == [14] * 10
    assert np.array_equal(load_subset(folder, 0.1, small_dataset), indices)
    # rewriting replaces the folder: stale tags disappear, no temporary folders stay
    write_subsets(folder, small_dataset, [0.01], seed=0)
    assert sorted(p.name for p in folder.iterdir()) == ["1pct.txt", "manifest.json", "val.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_read_subset_errors(tmp_path):
    path = tmp_path / "s.txt"
    with pytest.raises(DataError, match=f"{path}: subset file not found"):
        read_subset(path, 10)
    path.write_text("1\n2\nx\n")
    with pytest.raises(DataError, match=f"{path}:3: not an integer"):
        read_subset(path, 10)
    path.write_text("1\n12\n")
    with pytest.raises(DataError, match=f"{path}: index 12 outside the training split of 10"):
        read_subset(path, 10)
    path.write_text("3\n1\n")
    with pytest.raises(DataError, match="not sorted and unique"):
        read_subset(path, 10)
    path.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_subset(path, 10)


def test_load_subset_refuses_another_data_set(tmp_path, small_dataset):
    write_subsets(tmp_path / "subsets", small_dataset, [0.1], seed=0)
    manifest = tmp_path / "subsets" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["content_hash"] = "0" * 64
    manifest.write_text(json.dumps(data))
    with pytest.raises(DataError, match="subsets were made for data set hash 000000000000"):
        load_subset(tmp_path / "subsets", 0.1, small_dataset)
    with pytest.raises(DataError, match="not found"):
        load_subset(tmp_path / "nothing", 0.1, small_dataset)


def test_validation_split_is_stratified_seeded_and_disjoint_from_every_subset(tmp_path, small_dataset):
    folder = tmp_path / "subsets"
    manifest = write_subsets(folder, small_dataset, [0.1, 1.0], seed=0, val_fraction=0.2)
    labels = small_dataset.split("train").labels
    val = load_validation(folder, small_dataset)
    per_class = np.bincount(labels, minlength=10)
    assert np.bincount(labels[val], minlength=10).tolist() == \
        [int(np.floor(0.2 * n + 0.5)) for n in per_class]  # stratified: round(0.2 n_c) per class
    entry = manifest["validation"]
    assert entry["file"] == "val.txt" and entry["count"] == len(val) and entry["fraction"] == 0.2
    assert entry["counts_per_class"] == np.bincount(labels[val], minlength=10).tolist()
    for fraction in (0.1, 1.0):  # 100% of the labels = every training image outside val
        assert not set(load_subset(folder, fraction, small_dataset)) & set(val)
    assert len(load_subset(folder, 1.0, small_dataset)) == len(labels) - len(val)
    again = write_subsets(tmp_path / "again", small_dataset, [0.1], seed=0, val_fraction=0.2)
    assert again["validation"] == entry
    other = write_subsets(tmp_path / "other", small_dataset, [0.1], seed=1, val_fraction=0.2)
    assert not np.array_equal(load_validation(tmp_path / "other", small_dataset), val)
    assert other["validation"]["counts_per_class"] == entry["counts_per_class"]
