"""Reading a source stored under an S3 prefix (``s3://bucket/prefix``) with boto3.

The client is a plain ``boto3.client("s3")``: endpoint, credentials and region come from
the standard AWS chain (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``~/.aws/config``, ...).
Objects are downloaded into a temporary folder that mirrors the prefix, and the local
readers take it from there (disk, not memory, holds the copy).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from components.errors import DataError

log = logging.getLogger(__name__)

DOWNLOAD_THREADS = 8
DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403",
          "AllAccessDisabled", "ExpiredToken", "InvalidToken"}


def is_s3_url(path: str | None) -> bool:
    return bool(path) and str(path).startswith("s3://")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b/")`` (prefix ends with "/" unless empty)."""
    if not is_s3_url(url):
        raise DataError(f"{url}: not an s3:// URL")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise DataError(f"{url}: no bucket in the S3 URL")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def _explain(url: str, err: Exception) -> DataError:
    from botocore.exceptions import ClientError

    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        message = err.response.get("Error", {}).get("Message", "")
        if code in ("NoSuchBucket", "404", "NoSuchKey"):
            return DataError(f"{url}: bucket or key does not exist ({code})")
        if code in DENIED:
            return DataError(f"{url}: access denied ({code}: {message}); check the AWS "
                             f"credentials and the bucket policy")
        return DataError(f"{url}: S3 error {code}: {message}")
    return DataError(f"{url}: cannot reach S3 ({type(err).__name__}: {err})")


def _client() -> Any:
    import boto3

    # A fresh session re-reads the environment and config files; boto3's default session
    # caches credentials from its first use.
    return boto3.session.Session().client("s3")


def list_objects(url: str) -> list[tuple[str, int]]:
    """[(key, size)] of the objects under the prefix (folder markers skipped)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_s3_url(url)
    objects: list[tuple[str, int]] = []
    try:
        pages = _client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            objects += [(o["Key"], int(o["Size"])) for o in page.get("Contents", [])
                        if not o["Key"].endswith("/")]
    except (ClientError, BotoCoreError) as err:
        raise _explain(url, err) from err
    if not objects:
        raise DataError(f"{url}: no objects under this S3 prefix")
    return objects


def download_prefix(url: str, dest: Path) -> Path:
    """Copy every object under ``url`` into ``dest`` (keeping relative paths); returns dest."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_s3_url(url)
    objects = list_objects(url)
    client = _client()  # boto3 clients are thread-safe
    total = sum(size for _, size in objects)
    log.info("%s: downloading %d objects (%.1f MB)", url, len(objects), total / 1e6)
    targets = []
    for key, _ in objects:
        relative = PurePosixPath(key[len(prefix):])
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise DataError(f"s3://{bucket}/{key}: key escapes the prefix {url}")
        targets.append((key, dest.joinpath(*relative.parts)))

    def fetch(item: tuple[str, Path]) -> None:
        key, target = item
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            client.download_file(bucket, key, str(target))
        except (ClientError, BotoCoreError) as err:
            raise _explain(f"s3://{bucket}/{key}", err) from err

    # many small objects (image folders) are latency-bound: fetch several at once
    with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
        for done, _ in enumerate(pool.map(fetch, targets), start=1):
            if done % 5000 == 0:
                log.info("%s: %d/%d objects downloaded", url, done, len(targets))
    return dest


@contextmanager
def local_copy(url: str) -> Iterator[Path]:
    """A temporary local folder holding the objects under ``url``; removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix="simclr-s3-"))
    try:
        yield download_prefix(url, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class S3Path:
    """A read-only, pathlib-like view of the objects under an S3 prefix (listed once).

    Supports what the image-folder reader needs (``/``, ``name``, ``suffix``, ``is_dir``,
    ``is_file``, ``exists``, ``iterdir``, ``read_bytes``) so images stream straight from S3
    without a local copy. ``str()`` is the object's ``s3://`` URL, so errors name the key.
    """

    def __init__(self, index: _Index, relative: str = ""):
        self._index = index
        self._relative = relative

    @classmethod
    def root(cls, url: str) -> S3Path:
        return cls(_Index(url))

    def __truediv__(self, name: str) -> S3Path:
        return S3Path(self._index, f"{self._relative}/{name}" if self._relative else name)

    def __str__(self) -> str:
        base = f"s3://{self._index.bucket}/{self._index.prefix}".rstrip("/")
        return f"{base}/{self._relative}" if self._relative else base

    def __repr__(self) -> str:
        return f"S3Path({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, S3Path) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: S3Path) -> bool:
        return str(self) < str(other)

    @property
    def name(self) -> str:
        return PurePosixPath(self._relative).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self._relative).suffix

    def is_dir(self) -> bool:
        return self._relative in self._index.children

    def is_file(self) -> bool:
        return self._relative in self._index.files

    def exists(self) -> bool:
        return self.is_dir() or self.is_file()

    def iterdir(self) -> Iterator[S3Path]:
        for child in sorted(self._index.children.get(self._relative, ())):
            yield self / child

    def read_bytes(self) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        key = f"{self._index.prefix}{self._relative}"
        try:
            return self._index.client.get_object(Bucket=self._index.bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as err:
            raise _explain(str(self), err) from err


class _Index:
    """Keys under a prefix as relative files and {folder: child names}."""

    def __init__(self, url: str):
        self.bucket, self.prefix = parse_s3_url(url)
        self.client = _client()
        self.files: set[str] = set()
        self.children: dict[str, set[str]] = {"": set()}
        for key, _ in list_objects(url):
            relative = key[len(self.prefix):]
            parts = PurePosixPath(relative).parts
            if ".." in parts:
                raise DataError(f"s3://{self.bucket}/{key}: key escapes the prefix {url}")
            self.files.add(relative)
            for depth in range(len(parts)):
                parent = "/".join(parts[:depth])
                self.children.setdefault(parent, set()).add(parts[depth])
                if depth < len(parts) - 1:
                    self.children.setdefault("/".join(parts[:depth + 1]), set())
