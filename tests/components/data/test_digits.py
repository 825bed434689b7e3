import numpy as np

from components.config import SourceConfig
from components.data.digits import digits_arrays
from components.data.sources import ingest_sources

# content hash of digits as ingested with test_fraction 0.2 and split seed 0
DIGITS_HASH = "f4823f6168b8b84225b9d41aa2c51eb92341ee551c089024c0a4817c570addcc"


def test_digits_counts_stratified_split_and_hash(tmp_path):
    source = SourceConfig(kind="digits", path=None, name="digits")
    (ds,) = ingest_sources([(source, tmp_path / "digits")], shard_size=500, split_seed=0)
    train, test = ds.manifest["splits"]["train"], ds.manifest["splits"]["test"]
    assert train["count"] + test["count"] == 1797
    assert test["count"] == 359
    images, labels = digits_arrays()
    per_class = np.bincount(labels)
    # every class keeps round(0.2 * n_c) test images
    assert test["counts_per_class"] == [int(np.floor(0.2 * n + 0.5)) for n in per_class]
    assert ds.image_shape == (8, 8, 1) and ds.classes == [str(i) for i in range(10)]
    assert ds.content_hash == DIGITS_HASH
    assert ds.manifest["source"]["split"] == "stratified"


def test_digits_scaled_to_full_uint8_range():
    images, labels = digits_arrays()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 255
    assert set(np.unique(images).tolist()) <= {round(v * 255 / 16) for v in range(17)}
    assert len(labels) == 1797
