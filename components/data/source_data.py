"""What every source reader hands to the ingest: class names and a stream of image batches."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components.config import SourceConfig
from components.errors import DataError

log = logging.getLogger(__name__)

Batch = tuple[str, np.ndarray, np.ndarray]  # (split, uint8 images (n, H, W, C), int64 labels (n,))


@dataclass
class SourceData:
    """An opened source: everything cheap is already validated, pixels come lazily.

    ``batches`` yields ``(split, images, labels)``; reading it may still raise
    :class:`DataError` (a truncated file is found only when its bytes are read).
    """

    classes: list[str]
    batches: Iterator[Batch]
    info: dict[str, Any] = field(default_factory=dict)  # how the data was read (for the manifest)


def class_names(cfg: SourceConfig, found: list[str] | None, max_label: int, where: str) -> list[str]:
    """Names from the source when it has them, else ``cfg.classes``, else "0", "1", ...

    ``max_label`` is the largest integer label seen (-1 if unknown); names must cover it.
    """
    if found is not None:
        if cfg.classes is not None and list(cfg.classes) != list(found):
            log.warning("%s: class names come from the source %s; ignoring data source classes %s",
                        where, found, cfg.classes)
        names = list(found)
        key = f"{where} (class names)"
    elif cfg.classes is not None:
        names = list(cfg.classes)
        key = f"data source {cfg.name!r} classes"
    else:
        names = [str(i) for i in range(max(max_label + 1, 1))]
        key = where
    if max_label >= len(names):
        raise DataError(f"{where}: label {max_label} found but {key} has only {len(names)} "
                        f"names")
    return names


class Progress:
    """Logs ``<what>: n/total images`` at most every ``every_s`` seconds."""

    def __init__(self, what: str, total: int | None = None, every_s: float = 5.0):
        self.what, self.total, self.every_s = what, total, every_s
        self.count = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            of = f"/{self.total}" if self.total else ""
            log.info("%s: %d%s images (%.0f s)", self.what, self.count, of, now - self.start)
