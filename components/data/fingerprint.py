"""A cheap fingerprint of a source: what changes when its images change, read without the images.

- a local folder or file (IDX, CIFAR, image folder): every file's relative path, size and
  ``mtime_ns``;
- an ``s3://`` prefix: every object's key, size and ETag (one ``list_objects_v2`` listing);
- ``digits`` (bundled with scikit-learn): the scikit-learn version.

The ``fingerprint`` stage writes these into a small file that ``ingest`` depends on, so DVC reruns
``ingest`` (and everything downstream) exactly when a source changed. A source that cannot be
listed (missing path, S3 error) gets its error as fingerprint: ``ingest`` then fails with the
full message, and the fingerprint changes again when the source is fixed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from components.config import SourceConfig
from components.errors import DataError


def _digest(entries: list[Any]) -> str:
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def local_listing(path: Path) -> list[tuple[str, int, int]]:
    """``[(relative path, size, mtime_ns)]`` of the files under ``path`` (or of ``path`` itself)."""
    if path.is_file():
        stat = path.stat()
        return [(path.name, stat.st_size, stat.st_mtime_ns)]
    listing = []
    for file in sorted(path.rglob("*")):
        if file.is_file():
            stat = file.stat()
            listing.append((file.relative_to(path).as_posix(), stat.st_size, stat.st_mtime_ns))
    return listing


def s3_listing(url: str) -> list[tuple[str, int, str]]:
    """``[(key, size, ETag)]`` of the objects under an ``s3://`` prefix."""
    from botocore.exceptions import BotoCoreError, ClientError

    from components.data import s3

    bucket, prefix = s3.parse_s3_url(url)
    listing: list[tuple[str, int, str]] = []
    try:
        pages = s3._client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            listing += [(o["Key"], int(o["Size"]), str(o.get("ETag", "")))
                        for o in page.get("Contents", []) if not o["Key"].endswith("/")]
    except (ClientError, BotoCoreError) as err:
        raise s3._explain(url, err) from err
    return sorted(listing)


def source_fingerprint(cfg: SourceConfig) -> dict[str, Any]:
    """``{"kind", "path", "files", "bytes", "digest"}`` (or ``"error"``) of one source."""
    from components.data import s3

    record: dict[str, Any] = {"kind": cfg.kind, "path": cfg.path}
    if cfg.kind == "digits":
        import sklearn

        record["sklearn"] = sklearn.__version__
        return record
    assert cfg.path is not None  # SourceConfig validates this
    try:
        if s3.is_s3_url(cfg.path):
            listing: list[Any] = s3_listing(cfg.path)
        elif Path(cfg.path).exists():
            listing = local_listing(Path(cfg.path))
        else:
            raise DataError(f"{cfg.path}: source path not found")
    except DataError as err:
        record["error"] = str(err)
        return record
    record.update(files=len(listing), bytes=sum(entry[1] for entry in listing),
                  digest=_digest(listing))
    return record


def sources_fingerprint(sources: list[SourceConfig]) -> dict[str, dict[str, Any]]:
    """``{source name: source_fingerprint}`` of every source."""
    return {source.name: source_fingerprint(source) for source in sources}
