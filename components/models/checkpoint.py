"""Encoder checkpoints: one self-describing file that rebuilds the encoder without the config.

Format ``simclr-encoder/1``: a dict ``{"format", "model" (ModelConfig as JSON), "in_channels",
"image_size", "state_dict", "meta"}`` written atomically (temporary file + rename) and read
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from components.config import ModelConfig
from components.errors import PipelineError
from components.models.encoder import Encoder, build_encoder

FORMAT = "simclr-encoder/1"
# the ModelConfig fields that define the encoder (the head ones do not)
ENCODER_FIELDS = ("arch", "width", "stem")


@dataclass(frozen=True)
class EncoderSpec:
    model: ModelConfig
    in_channels: int
    image_size: int
    meta: dict[str, Any] = field(default_factory=dict)


def save_encoder(
    path: str | Path,
    encoder: Encoder,
    model_cfg: ModelConfig,
    in_channels: int,
    image_size: int,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write the encoder's weights and what is needed to rebuild it; returns the path.

    ``meta`` must hold plain data (str, numbers, bools, lists, dicts, None); NumPy / torch
    scalars are converted, so that ``torch.load(weights_only=True)`` can read the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    payload = {
        "format": FORMAT,
        "model": model_cfg.model_dump(mode="json"),
        "in_channels": int(in_channels),
        "image_size": int(image_size),
        "state_dict": state,
        "meta": _plain(meta or {}),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _plain(meta: dict[str, Any]) -> dict[str, Any]:
    def convert(value: Any) -> Any:
        if hasattr(value, "item") and callable(value.item):  # NumPy / torch scalars
            return value.item()
        if hasattr(value, "tolist"):
            return value.tolist()
        raise TypeError(f"checkpoint meta: {type(value).__name__} is not plain data")

    return json.loads(json.dumps(meta, default=convert))


def load_encoder(
    path: str | Path, expect: ModelConfig | None = None, map_location: str | torch.device = "cpu"
) -> tuple[Encoder, EncoderSpec]:
    """Rebuild the encoder saved at ``path`` (in eval mode).

    Raises :class:`PipelineError` naming the file if it is missing, not a ``simclr-encoder/1``
    file, its architecture differs from ``expect`` (arch, width, stem), or its weights do not
    fit the architecture it declares.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: encoder checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise PipelineError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise PipelineError(f"{path}: expected format {FORMAT!r}, found {found!r}")
    try:
        cfg = ModelConfig.model_validate(payload["model"])
        spec = EncoderSpec(
            cfg, int(payload["in_channels"]), int(payload["image_size"]), payload.get("meta") or {}
        )
        state = payload["state_dict"]
    except (KeyError, TypeError, ValueError, ValidationError) as err:
        raise PipelineError(f"{path}: malformed {FORMAT} checkpoint ({err})") from err
    if expect is not None:
        diffs = [
            f"{name}={getattr(cfg, name)!r} (expected {getattr(expect, name)!r})"
            for name in ENCODER_FIELDS
            if getattr(cfg, name) != getattr(expect, name)
        ]
        if diffs:
            raise PipelineError(f"{path}: encoder architecture mismatch: {', '.join(diffs)}")
    try:
        encoder = build_encoder(cfg, spec.in_channels, spec.image_size)
        encoder.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[:3]
        raise PipelineError(
            f"{path}: weights do not fit the declared {cfg.arch} encoder: {' '.join(first)}"
        ) from err
    encoder.to(map_location).eval()
    return encoder, spec
