"""Open a configured source (local folder or S3 prefix) and ingest it into the canonical store.

``SourceConfig.kind`` picks the reader: ``idx`` (MNIST-style), ``digits`` (scikit-learn),
``image_folder`` or ``cifar``. A ``path`` of the form ``s3://bucket/prefix`` is read in place
for image folders (objects stream in batches); the few files of IDX and CIFAR sources are
first copied into a temporary folder, and errors then name the S3 key, not the local copy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from components.config import SourceConfig
from components.data.source_data import Batch, SourceData
from components.data.store import CanonicalDataset, DatasetWriter
from components.errors import DataError

log = logging.getLogger(__name__)


def _rename_errors(batches: Iterator[Batch], local: str, url: str) -> Iterator[Batch]:
    try:
        yield from batches
    except DataError as err:
        raise DataError(str(err).replace(local, url.rstrip("/"))) from err


def open_source(cfg: SourceConfig, split_seed: int, stack: ExitStack) -> SourceData:
    """Open ``cfg``'s source; temporary copies (S3) live until ``stack`` closes."""
    from components.data import s3

    if cfg.kind == "digits":
        from components.data.digits import open_digits

        return open_digits(cfg, split_seed)
    assert cfg.path is not None  # SourceConfig validates this
    if s3.is_s3_url(cfg.path) and cfg.kind == "image_folder":
        from components.data.image_folder import open_image_folder

        return open_image_folder(s3.S3Path.root(cfg.path), cfg, split_seed)  # streams, no copy
    local, url = Path(cfg.path), None
    if s3.is_s3_url(cfg.path):
        url = cfg.path
        local = stack.enter_context(s3.local_copy(url))
    try:
        data = _open_local(cfg, local, split_seed)
    except DataError as err:
        if url is None:
            raise
        raise DataError(str(err).replace(str(local), url.rstrip("/"))) from err
    if url is not None:
        data.batches = _rename_errors(data.batches, str(local), url)
    return data


def _open_local(cfg: SourceConfig, path: Path, split_seed: int) -> SourceData:
    if not path.exists():
        raise DataError(f"{path}: source path not found (data source {cfg.name!r}, kind {cfg.kind})")
    if cfg.kind == "idx":
        from components.data.idx import open_idx

        return open_idx(path, cfg, split_seed)
    if cfg.kind == "cifar":
        from components.data.cifar import open_cifar

        return open_cifar(path, cfg, split_seed)
    if cfg.kind == "image_folder":
        from components.data.image_folder import open_image_folder

        return open_image_folder(path, cfg, split_seed)
    raise DataError(f"data source {cfg.name!r}: unknown kind {cfg.kind!r}")


def source_record(cfg: SourceConfig, data: SourceData, split_seed: int) -> dict[str, Any]:
    """What the manifest records about where the images came from."""
    record = cfg.model_dump(mode="json")
    record.update(data.info)
    if data.info.get("split") == "stratified":
        record["split_seed"] = split_seed
    return record


def ingest_sources(jobs: Sequence[tuple[SourceConfig, Path]], shard_size: int,
                   split_seed: int) -> list[CanonicalDataset]:
    """Read every ``(source, target folder)`` into a canonical data set, all or nothing.

    Every source is read completely into a temporary folder before the first one is swapped
    in, so any :class:`DataError` leaves all previous data sets untouched and no temporary
    folder behind.
    """
    pending: list[tuple[DatasetWriter, dict[str, Any]]] = []
    with ExitStack() as writers:
        for cfg, target in jobs:
            start = time.monotonic()
            with ExitStack() as copies:
                data = open_source(cfg, split_seed, copies)
                writer = writers.enter_context(
                    DatasetWriter(target, cfg.name, data.classes, shard_size))
                counts: dict[str, int] = {}
                for split, images, labels in data.batches:
                    if len(images) or len(labels):
                        writer.add(split, images, labels)
                        counts[split] = counts.get(split, 0) + len(images)
            if not sum(counts.values()):
                raise DataError(f"{cfg.path or cfg.kind}: no images read (data source {cfg.name!r})")
            log.info("%s: read %s images, %d classes in %.1f s", cfg.name,
                     " + ".join(f"{n} {s}" for s, n in counts.items()), len(data.classes),
                     time.monotonic() - start)
            pending.append((writer, source_record(cfg, data, split_seed)))
        return [writer.commit(source=record) for writer, record in pending]
