"""An image folder ``root/<class>/*.png|jpg|jpeg`` (or ``root/{train,test}/<class>/...``).

``root`` is a local :class:`~pathlib.Path` or an :class:`~components.data.s3.S3Path`, from
which images stream without a local copy (several objects fetched and decoded at once).

Images may differ in size and mode. They are converted to grey (``L``) or ``RGB`` and, when
``image_size`` is set, resized so the shorter side is ``image_size`` and centre-cropped to a
square (the aspect ratio is kept). A first pass reads only the headers (size, mode); pixels
are then decoded in batches, so a folder larger than memory streams into the store.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeAlias

import numpy as np
from PIL import Image, UnidentifiedImageError

from components.config import SourceConfig
from components.data.source_data import Batch, Progress, SourceData, class_names
from components.data.split import stratified_split
from components.errors import DataError

if TYPE_CHECKING:
    from components.data.s3 import S3Path

Folder: TypeAlias = "Path | S3Path"

log = logging.getLogger(__name__)

EXTENSIONS = {".png", ".jpg", ".jpeg"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
BATCH = 512
THREADS = 8  # files read and decoded at once (S3 reads are latency-bound)


def _bytes(path: Folder) -> Path | IO[bytes]:
    return path if isinstance(path, Path) else io.BytesIO(path.read_bytes())


def _class_dirs(folder: Folder) -> list[Folder]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _images_in(folder: Folder) -> list[Folder]:
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise DataError(f"{folder}: class folder has no .png/.jpg/.jpeg images")
    return files


def list_files(root: Folder) -> tuple[list[str], dict[str, tuple[list[Folder], np.ndarray]] | None,
                                      tuple[list[Folder], np.ndarray] | None]:
    """(classes, {split: (files, labels)} when root has train/ and test/, else (files, labels))."""
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    if (root / "train").is_dir() and (root / "test").is_dir():
        per_split = {s: {d.name: _images_in(d) for d in _class_dirs(root / s)}
                     for s in ("train", "test")}
        if not per_split["train"]:
            raise DataError(f"{root / 'train'}: no class folders")
        unknown = sorted(set(per_split["test"]) - set(per_split["train"]))
        if unknown:
            raise DataError(f"{root / 'test'}: class folders {unknown} not in {root / 'train'}")
        classes = sorted(per_split["train"])
        splits = {}
        for split, by_class in per_split.items():
            files = [f for c in classes for f in by_class.get(c, [])]
            labels = np.array([i for i, c in enumerate(classes) for _ in by_class.get(c, [])],
                              dtype=np.int64)
            splits[split] = (files, labels)
        return classes, splits, None
    by_class = {d.name: _images_in(d) for d in _class_dirs(root)}
    if not by_class:
        raise DataError(f"{root}: no class folders (expected root/<class>/*.png|jpg|jpeg)")
    classes = sorted(by_class)
    files = [f for c in classes for f in by_class[c]]
    labels = np.array([i for i, c in enumerate(classes) for _ in by_class[c]], dtype=np.int64)
    return classes, None, (files, labels)


def _header(path: Folder) -> tuple[tuple[int, int], str]:
    try:
        with Image.open(_bytes(path)) as image:
            return image.size, image.mode
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable image ({err})") from err


def target_geometry(files: list[Folder], cfg: SourceConfig, root: Folder) -> tuple[int, int, int]:
    """(H, W, C) of the stored images: from the config, else from the headers of every file."""
    if cfg.image_size is not None and cfg.channels is not None:
        return cfg.image_size, cfg.image_size, cfg.channels  # no header pass needed
    sizes: dict[tuple[int, int], Path] = {}
    colour = False
    with ThreadPoolExecutor(THREADS) as pool:
        for path, (size, mode) in zip(files, pool.map(_header, files), strict=True):
            sizes.setdefault(size, path)
            colour = colour or mode not in GREY_MODES
    channels = cfg.channels or (3 if colour else 1)
    if cfg.image_size is not None:
        return cfg.image_size, cfg.image_size, channels
    if len(sizes) > 1:
        examples = ", ".join(f"{p} is {w}x{h}" for (w, h), p in list(sizes.items())[:2])
        raise DataError(f"{root}: images differ in size ({examples}); set the source's "
                        f"image_size to resize them")
    (width, height), = sizes
    return height, width, channels


def load_image(path: Folder, height: int, width: int, channels: int) -> np.ndarray:
    """uint8 (H, W, C): converted, resized (shorter side) and centre-cropped."""
    try:
        with Image.open(_bytes(path)) as image:
            image.load()
            image = image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError,
            SyntaxError) as err:
        raise DataError(f"{path}: unreadable image ({err})") from err
    if image.size != (width, height):
        scale = max(width / image.width, height / image.height)
        new = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
        image = image.resize(new, Image.Resampling.BICUBIC)
        left, top = (new[0] - width) // 2, (new[1] - height) // 2
        image = image.crop((left, top, left + width, top + height))
    array = np.asarray(image, dtype=np.uint8)
    return array.reshape(height, width, channels)


def open_image_folder(root: Folder, cfg: SourceConfig, split_seed: int) -> SourceData:
    """Image folder source; keeps a train/test folder split, else a seeded stratified one."""
    found, splits, flat = list_files(root)
    if splits is None:
        assert flat is not None
        files, labels = flat
        is_test = stratified_split(labels, cfg.test_fraction, split_seed)
        splits = {"train": ([f for f, t in zip(files, is_test, strict=True) if not t], labels[~is_test]),
                  "test": ([f for f, t in zip(files, is_test, strict=True) if t], labels[is_test])}
    classes = class_names(cfg, found, len(found) - 1, str(root))
    all_files = [f for files, _ in splits.values() for f in files]
    log.info("%s: %d images in %d classes; reading headers", root, len(all_files), len(classes))
    height, width, channels = target_geometry(all_files, cfg, root)

    def batches() -> Iterator[Batch]:
        progress = Progress(str(root), len(all_files))

        def load(path: Folder) -> np.ndarray:
            return load_image(path, height, width, channels)

        with ThreadPoolExecutor(THREADS) as pool:
            for split, (files, labels) in splits.items():
                for start in range(0, len(files), BATCH):
                    chunk = files[start:start + BATCH]
                    images = np.stack(list(pool.map(load, chunk)))
                    yield split, images, labels[start:start + BATCH]
                    progress.update(len(chunk))

    info = {"split": "stratified" if flat is not None else "source",
            "image_shape": [height, width, channels]}
    return SourceData(classes, batches(), info)
