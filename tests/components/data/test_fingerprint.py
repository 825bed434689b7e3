"""Source fingerprints: what changes when a source's files change, read without the images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components.config import SourceConfig
from components.data.fingerprint import source_fingerprint, sources_fingerprint
from tests.components.data.formats import image_folder


def folder_source(path: Path | str, name: str = "images") -> SourceConfig:
    return SourceConfig(kind="image_folder", path=str(path), name=name)


def test_local_folder_changes_with_added_changed_or_touched_files_only(tmp_path: Path):
    folder = image_folder(tmp_path / "images", {"a": 3, "b": 2})
    first = source_fingerprint(folder_source(folder))
    assert (first["files"], first["kind"]) == (5, "image_folder") and first["bytes"] > 0
    assert source_fingerprint(folder_source(folder)) == first  # nothing new: byte-identical

    image_folder(folder, {"a": 4})  # one more image of class a
    added = source_fingerprint(folder_source(folder))
    assert added["files"] == 6 and added["digest"] != first["digest"]

    target = folder / "a" / "000.png"
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten in place
    assert source_fingerprint(folder_source(folder))["digest"] != added["digest"]


def test_single_file_digits_and_missing_sources(tmp_path: Path):
    file = tmp_path / "train-images-idx3-ubyte"
    file.write_bytes(b"\0" * 16)
    assert source_fingerprint(SourceConfig(kind="idx", path=str(file), name="x"))["files"] == 1
    import sklearn

    digits = source_fingerprint(SourceConfig(kind="digits", path=None, name="digits"))
    assert digits == {"kind": "digits", "path": None, "sklearn": sklearn.__version__}
    missing = source_fingerprint(folder_source(tmp_path / "nowhere"))
    assert "source path not found" in missing["error"] and "digest" not in missing
    both = sources_fingerprint([folder_source(tmp_path / "nowhere", "a"),
                                SourceConfig(kind="digits", path=None, name="b")])
    assert list(both) == ["a", "b"]


@pytest.mark.s3
def test_s3_prefix_changes_when_an_object_is_added(tmp_path: Path, s3_server):
    s3_server.make_bucket("fingerprint")
    folder = image_folder(tmp_path / "images", {"a": 2, "b": 2})
    s3_server.upload_folder(folder, "s3://fingerprint/images")
    source = folder_source("s3://fingerprint/images")
    first = source_fingerprint(source)
    assert first["files"] == 4 and source_fingerprint(source) == first
    image_folder(tmp_path / "more", {"a": 3})
    s3_server.client().upload_file(str(tmp_path / "more" / "a" / "002.png"), "fingerprint",
                                   "images/a/002.png")
    second = source_fingerprint(source)
    assert second["files"] == 5 and second["digest"] != first["digest"]
    denied = s3_server.env(denied=True)
    with pytest.MonkeyPatch.context() as env:
        for name, value in denied.items():
            env.setenv(name, value)
        assert "access denied" in source_fingerprint(source)["error"]
