"""Streaming index batches from the memory-mapped store to the evaluation device.

:func:`stream` reads each batch's rows (uint8, only those rows: ``ImageSplit.images(indices)``
touches just their pages of the shards) in a background thread, ``depth`` batches ahead of
the consumer, so the forward pass never waits on disk. On CUDA the batch is pinned and copied
with ``non_blocking=True``; the uint8 -> float conversion happens on the device, per batch
(:func:`components.evaluation.features.adapt_images`). Memory is bounded by
``depth + 1`` batches, whatever the size of the split.

A "rows" source is anything with ``images(indices) -> uint8 (k, H, W, C)`` and ``len``: an
:class:`~components.data.store.ImageSplit`, a
:class:`~components.evaluation.holdout.SplitView`, a
:class:`~components.evaluation.holdout.HeldOutTest` or :class:`ArrayRows`.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

_DONE = object()


class ArrayRows:
    """An in-memory uint8 array (N, H, W, C) plus labels (N,) as a rows source."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self._images, self.labels = images, np.asarray(labels)

    def __len__(self) -> int:
        return len(self._images)

    def images(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        return self._images if indices is None else self._images[np.asarray(indices, np.int64)]


def index_batches(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive slices of ``indices`` (int64), each of at most ``batch_size``."""
    indices = np.asarray(indices, dtype=np.int64)
    return [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]


def _as_tensor(images: np.ndarray, pin: bool) -> torch.Tensor:
    if not (images.flags.writeable and images.flags.c_contiguous):
        images = np.array(images, order="C")  # a memory-mapped view: copy its uint8 rows
    tensor = torch.from_numpy(images)
    return tensor.pin_memory() if pin else tensor


def stream(rows: Any, batches: Iterable[np.ndarray], device: torch.device,
           depth: int = 2) -> Iterator[torch.Tensor]:
    """uint8 (B, H, W, C) tensors on ``device``, one per index batch, read ahead by a thread.

    Stopping early (``break``) ends the reader thread; a read error is raised here.
    """
    pin = device.type == "cuda"
    ready: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()

    def read() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                item = _as_tensor(rows.images(batch), pin)
                while not stop.is_set():
                    try:
                        ready.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # noqa: BLE001 - re-raised in the consumer
            ready.put(err)
            return
        ready.put(_DONE)

    reader = threading.Thread(target=read, name="eval-prefetch", daemon=True)
    reader.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item.to(device, non_blocking=pin)
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.05)
        reader.join()
