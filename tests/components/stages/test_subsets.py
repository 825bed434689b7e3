"""Stage ``subsets`` on the real Fashion-MNIST data set (ingested once per session)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from components.config import config_from_dict
from components.data.subsets import read_subset
from components.stage_api import StagePaths
from components.stages.cli import main
from components.stages.runner import stage_function

run = stage_function("subsets")  # the stage under the runner, untracked


def config(data: Path, seed: int = 0, fractions=(0.01, 0.1)):
    return config_from_dict({"paths": {"data": str(data)},
                             "subsets": {"fractions": list(fractions), "seed": seed}})


def data_root(tmp_path: Path, dataset) -> Path:
    """``tmp_path/data`` whose ``datasets/fashion-mnist`` links to the session's data set."""
    (tmp_path / "data" / "datasets").mkdir(parents=True)
    (tmp_path / "data" / "datasets" / "fashion-mnist").symlink_to(dataset.root)
    return tmp_path / "data"


def test_subsets_exact_balanced_counts_within_train_split(tmp_path, fashion_mnist_dataset):
    data = data_root(tmp_path, fashion_mnist_dataset)
    cfg = config(data)
    result = run(cfg)
    paths = StagePaths.of(cfg)
    manifest = json.loads((paths.subsets / "manifest.json").read_text())
    assert manifest["content_hash"] == fashion_mnist_dataset.content_hash
    assert manifest["seed"] == 0 and manifest["train_size"] == 60_000
    train_labels = fashion_mnist_dataset.split("train").labels
    for fraction, per_class in ((0.01, 60), (0.1, 600)):
        indices = read_subset(paths.subset_file(fraction), 60_000)
        tag = paths.subset_file(fraction).stem
        entry = manifest["subsets"][tag]
        assert entry["count"] == len(indices) == per_class * 10
        assert entry["counts_per_class"] == [per_class] * 10
        assert np.bincount(train_labels[indices], minlength=10).tolist() == [per_class] * 10
        assert indices.min() >= 0 and indices.max() < 60_000  # train split only
        assert result.metrics[f"subsets.{tag}.count"] == per_class * 10
    one = read_subset(paths.subset_file(0.01), 60_000)
    ten = read_subset(paths.subset_file(0.1), 60_000)
    assert set(one) <= set(ten)
    val = read_subset(paths.subsets / "val.txt", 60_000)  # the validation split every choice reads
    assert manifest["validation"]["count"] == len(val) == 6_000 == result.metrics["subsets.val.count"]
    assert np.bincount(train_labels[val], minlength=10).tolist() == [600] * 10
    assert not set(val) & set(ten)
    assert result.tags["data.subsets.content_hash"] == fashion_mnist_dataset.content_hash


def test_subsets_are_deterministic_per_seed(tmp_path, fashion_mnist_dataset):
    first = data_root(tmp_path / "a", fashion_mnist_dataset)
    second = data_root(tmp_path / "b", fashion_mnist_dataset)
    third = data_root(tmp_path / "c", fashion_mnist_dataset)
    run(config(first, seed=1, fractions=[0.01]))
    run(config(second, seed=1, fractions=[0.01]))
    run(config(third, seed=2, fractions=[0.01]))
    text = [(root / "subsets" / "1pct.txt").read_text() for root in (first, second, third)]
    assert text[0] == text[1] != text[2]


def test_cli_subsets_without_data_set_exits_2(tmp_path, capsys, session_tracking_uri):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "paths": {"data": str(tmp_path / "data"), "outputs": str(tmp_path / "outputs")},
        "tracking": {"tracking_uri": session_tracking_uri}}))
    assert main(["subsets", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'data/datasets/fashion-mnist/manifest.json'}: no canonical" in err
    assert not (tmp_path / "data" / "subsets").exists()
