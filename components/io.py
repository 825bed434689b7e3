"""Small file helpers every layer shares: atomic JSON writes and content hashes."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np


def write_json(path: Path, payload: Any) -> Path:
    """Atomic JSON write (temporary sibling + rename), keys sorted, one trailing newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def indices_sha256(indices: np.ndarray) -> str:
    """SHA-256 of an index array as int64 bytes (which images a subset or sample holds)."""
    return hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest()
