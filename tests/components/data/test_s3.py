"""Sources under an S3 prefix, served by a real SeaweedFS on loopback (reached via AWS_ENDPOINT_URL)."""

import pytest

from components.config import SourceConfig
from components.data.s3 import parse_s3_url
from components.data.sources import ingest_sources
from components.errors import DataError
from tests.components.data.formats import image_folder, random_idx_folder

pytestmark = pytest.mark.s3


def ingest(kind, path, target):
    source = SourceConfig(kind=kind, path=path, name="remote")
    return ingest_sources([(source, target)], shard_size=8, split_seed=0)[0]


def test_parse_s3_url():
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    with pytest.raises(DataError, match="no bucket"):
        parse_s3_url("s3:///x")


def test_idx_and_image_folder_from_s3_equal_local(tmp_path, s3_server):
    idx = random_idx_folder(tmp_path / "idx")
    s3_server.upload_folder(idx, "s3://sources/fmnist-small")
    s3_server.upload_folder(idx, "s3://sources/fmnist-small-2")  # a sibling prefix is not mixed in
    remote = ingest("idx", "s3://sources/fmnist-small", tmp_path / "remote")
    local = ingest("idx", str(idx), tmp_path / "local")
    assert remote.content_hash == local.content_hash
    assert remote.manifest["source"]["path"] == "s3://sources/fmnist-small"

    folder = image_folder(tmp_path / "imgs", {"a": 4, "b": 4}, size=(6, 6))
    s3_server.upload_folder(folder, "s3://sources/images/")
    remote = ingest("image_folder", "s3://sources/images/", tmp_path / "remote-img")
    assert remote.content_hash == ingest("image_folder", str(folder), tmp_path / "local-img").content_hash


def test_missing_prefix_and_bucket_are_named(tmp_path, s3_server):
    s3_server.make_bucket("sources")
    with pytest.raises(DataError, match="s3://sources/nothing-here: no objects under this S3 prefix"):
        ingest("idx", "s3://sources/nothing-here", tmp_path / "out")
    with pytest.raises(DataError, match="s3://no-such-bucket-x/p: bucket or key does not exist"):
        ingest("idx", "s3://no-such-bucket-x/p", tmp_path / "out")


def test_access_denied_is_named(tmp_path, s3_server, monkeypatch):
    idx = random_idx_folder(tmp_path / "idx")
    s3_server.upload_folder(idx, "s3://private/data")
    for name, value in s3_server.env(denied=True).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DataError, match="s3://private/data: access denied"):
        ingest("idx", "s3://private/data", tmp_path / "out")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(DataError, match="s3://private/data: access denied"):
        ingest("idx", "s3://private/data", tmp_path / "out")


def test_corrupt_object_error_names_the_s3_key(tmp_path, s3_server):
    idx = random_idx_folder(tmp_path / "idx")
    path = idx / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:60])
    s3_server.upload_folder(idx, "s3://sources/broken")
    with pytest.raises(DataError, match="s3://sources/broken/train-images-idx3-ubyte.gz: truncated"):
        ingest("idx", "s3://sources/broken", tmp_path / "out")


def test_image_folder_streams_from_s3_without_a_local_copy(tmp_path, s3_server, monkeypatch):
    import components.data.s3 as s3

    def no_copy(url):
        raise AssertionError("image folders must not be copied locally")

    monkeypatch.setattr(s3, "local_copy", no_copy)
    folder = tmp_path / "split"
    image_folder(folder / "train", {"a": 3, "b": 3}, size=(5, 5))
    image_folder(folder / "test", {"a": 1, "b": 1}, size=(5, 5))
    s3_server.upload_folder(folder, "s3://sources/split-images")
    ds = ingest("image_folder", "s3://sources/split-images", tmp_path / "out")
    assert ds.manifest["splits"]["train"]["counts_per_class"] == [3, 3]
    assert ds.manifest["splits"]["test"]["counts_per_class"] == [1, 1]
    assert ds.classes == ["a", "b"]

    (folder / "train" / "b" / "002.png").write_bytes(b"broken")
    s3_server.upload_folder(folder, "s3://sources/broken-images")
    with pytest.raises(DataError, match="s3://sources/broken-images/train/b/002.png: unreadable"):
        ingest("image_folder", "s3://sources/broken-images", tmp_path / "out2")
