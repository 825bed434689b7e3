"""Training state of a pretraining run: what a resume needs, in one atomically written file.

A checkpoint folder holds ``training_state.pt``: the SimCLR model's state dict (encoder and
head), the optimiser state, the global step, the number of finished epochs, the RNG states,
the configuration and the per-epoch history so far. Ray Train copies the folder to
``storage_path`` (local or ``s3://``) and registers it only after the copy completes.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.errors import PipelineError

STATE_FILE = "training_state.pt"
FORMAT = "simclr-training-state/1"


@dataclass
class TrainingState:
    """What a resumed worker restores; ``epoch`` counts finished epochs."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    step: int
    epoch: int
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    rng: dict[str, Any] = field(default_factory=dict)


def capture_rng() -> dict[str, Any]:
    """The process-wide RNG states (torch CPU/CUDA, NumPy legacy, Python), weights_only-safe."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        np_state = state["numpy"]
        np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32),
                             np_state["pos"], np_state["has_gauss"], np_state["gauss"]))
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(folder: str | Path, state: TrainingState) -> Path:
    """Write ``folder/training_state.pt`` via a temporary file and an atomic rename."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / STATE_FILE
    tmp = folder / f".{STATE_FILE}.tmp-{os.getpid()}"
    payload = {"format": FORMAT, "model": state.model, "optimizer": state.optimizer,
               "step": state.step, "epoch": state.epoch, "config": state.config,
               "history": state.history, "rng": state.rng}
    torch.save(payload, tmp)
    os.replace(tmp, target)
    return target


def load_training_state(folder: str | Path) -> TrainingState:
    """Read a folder written by :func:`save_training_state`; ``PipelineError`` names the file."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise PipelineError(f"{path}: no training state in this checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise PipelineError(f"{path}: unreadable training state ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PipelineError(f"{path}: not a {FORMAT} file")
    return TrainingState(model=payload["model"], optimizer=payload["optimizer"],
                         step=int(payload["step"]), epoch=int(payload["epoch"]),
                         config=payload["config"], history=list(payload["history"]),
                         rng=payload["rng"])
