import numpy as np
import pytest

import components.data.image_folder as image_folder
from components.config import SourceConfig
from components.data.sources import ingest_sources
from components.errors import DataError
from tests.components.data.formats import image_folder as make_folder
from tests.components.data.formats import write_image


def ingest(root, target, seed=0, shard_size=4, **kw):
    source = SourceConfig(kind="image_folder", path=str(root), name="folder", **kw)
    return ingest_sources([(source, target)], shard_size=shard_size, split_seed=seed)[0]


def test_flat_folder_same_size_grey_keeps_size_and_splits_stratified(tmp_path):
    root = make_folder(tmp_path / "src", {"cat": 5, "dog": 10}, size=(10, 8), mode="L")
    ds = ingest(root, tmp_path / "out", test_fraction=0.2)
    assert ds.classes == ["cat", "dog"]
    assert ds.image_shape == (8, 10, 1)  # (H, W, C) from a 10 wide, 8 high image
    assert ds.manifest["splits"]["test"]["counts_per_class"] == [1, 2]
    assert ds.manifest["splits"]["train"]["counts_per_class"] == [4, 8]
    values = set(ds.split("train").images()[:, 0, 0, 0].tolist() +
                 ds.split("test").images()[:, 0, 0, 0].tolist())
    assert values == {i for i in range(5)} | {40 + i for i in range(10)}
    assert ingest(root, tmp_path / "again").content_hash == ds.content_hash
    assert ingest(root, tmp_path / "other", seed=1).content_hash != ds.content_hash


def test_mixed_sizes_and_modes_are_resized_and_made_colour(tmp_path, monkeypatch):
    monkeypatch.setattr(image_folder, "BATCH", 3)  # several streamed batches per split
    root = tmp_path / "src"
    for i in range(4):
        write_image(root / "train" / "a" / f"{i}.png", (20 + i, 12), "L", value=10)
        write_image(root / "train" / "b" / f"{i}.jpg", (9, 30), "RGB", value=200)
    write_image(root / "test" / "a" / "x.jpeg", (16, 16), "RGB", value=50)
    write_image(root / "test" / "b" / "y.PNG", (5, 5), "L", value=90)
    (root / "train" / "a" / "notes.txt").write_text("ignored")
    ds = ingest(root, tmp_path / "out", image_size=6)
    assert ds.image_shape == (6, 6, 3)  # one colour image anywhere -> RGB
    assert ds.manifest["source"]["split"] == "source"
    assert ds.manifest["splits"]["train"]["counts_per_class"] == [4, 4]
    assert ds.manifest["splits"]["test"]["counts_per_class"] == [1, 1]
    test = ds.split("test").images()
    assert np.abs(test[0].astype(int) - [50, 205, 25]).max() <= 3  # JPEG is lossy
    assert np.all(test[1] == 90)  # grey replicated to 3 channels
    grey = ingest(root, tmp_path / "grey", image_size=4, channels=1)
    assert grey.image_shape == (4, 4, 1)


def test_differing_sizes_need_image_size(tmp_path):
    root = tmp_path / "src"
    write_image(root / "a" / "0.png", (4, 4), "L")
    write_image(root / "a" / "1.png", (4, 5), "L")
    write_image(root / "b" / "0.png", (4, 4), "L")
    with pytest.raises(DataError, match="images differ in size .* set the source's image_size"):
        ingest(root, tmp_path / "out")


def test_bad_folders_and_images_are_named(tmp_path):
    root = make_folder(tmp_path / "src", {"a": 3, "b": 3})
    (root / "c").mkdir()
    with pytest.raises(DataError, match=f"{root / 'c'}: class folder has no .png/.jpg/.jpeg"):
        ingest(root, tmp_path / "out")
    (root / "c").rmdir()
    bad = root / "b" / "001.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match=f"{bad}: unreadable image"):
        ingest(root, tmp_path / "out")
    write_image(bad, (32, 32), "RGB")
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # header fine, pixels truncated
    with pytest.raises(DataError, match=f"{bad}: unreadable image"):
        ingest(root, tmp_path / "out", image_size=8)
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match=f"{tmp_path / 'none'}: no class folders"):
        ingest(tmp_path / "none", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_many_small_images_stream_into_several_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(image_folder, "BATCH", 16)
    root = make_folder(tmp_path / "src", {str(c): 30 for c in range(3)}, size=(4, 4))
    ds = ingest(root, tmp_path / "out", shard_size=10)
    assert len(ds.split("train")) + len(ds.split("test")) == 90
    assert len(ds.manifest["splits"]["train"]["shards"]) == 8  # 72 train images / 10 per shard


def test_decompression_bomb_is_a_data_error(tmp_path, monkeypatch):
    from PIL import Image

    root = make_folder(tmp_path / "src", {"a": 2, "b": 2}, size=(40, 40))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40x40 > 2 x 100 pixels: a "bomb"
    with pytest.raises(DataError, match=r"src/a/00[01].png: unreadable image .*decompression bomb"):
        ingest(root, tmp_path / "out")
