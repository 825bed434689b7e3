"""Fixes to the canonical store found while building the ingest."""

import numpy as np

from components.data.store import DatasetWriter


def test_empty_batch_does_not_create_a_split_without_shards(tmp_path):
    with DatasetWriter(tmp_path / "ds", "x", ["a", "b"], shard_size=4) as writer:
        writer.add("train", np.zeros((3, 2, 2, 1), np.uint8), np.array([0, 1, 0]))
        writer.add("test", np.zeros((0, 2, 2, 1), np.uint8), np.array([], np.int64))
        ds = writer.commit(source={})
    assert ds.split_names == ["train"] and len(ds.split("train")) == 3


def test_hash_does_not_depend_on_shard_size(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (10, 3, 3, 1), dtype=np.uint8)
    hashes = set()
    for shard_size in (3, 10, 64):
        with DatasetWriter(tmp_path / f"ds{shard_size}", "x", ["a"], shard_size) as writer:
            writer.add("train", images[:4], np.zeros(4))
            writer.add("train", images[4:], np.zeros(6))
            hashes.add(writer.commit(source={}).content_hash)
    assert len(hashes) == 1
