"""Where evaluation runs: ``evaluate.device`` resolved to a torch device, plus the pretraining
config's numeric format (bf16 autocast, channels-last) applied to every evaluation forward.

``auto`` picks CUDA when ``torch.cuda.is_available()`` else the CPU; ``cuda`` without a CUDA
device is a configuration error (one line, exit 2), not a silent fall-back.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from components.errors import ConfigError
from components.precision import resolve_precision


def resolve_device(setting: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` -> a torch device (``auto``: CUDA when available)."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("evaluate.device: 'cuda' but torch sees no CUDA device "
                          "(use 'auto' or 'cpu')")
    if setting not in ("cpu", "cuda"):
        raise ConfigError(f"evaluate.device: {setting!r} is not one of auto, cpu, cuda")
    return torch.device(setting)


@dataclass(frozen=True)
class EvalRuntime:
    """The device evaluation runs on and its numeric format (from ``pretrain``)."""

    device: torch.device = torch.device("cpu")
    bf16: bool = False  # forward passes under bf16 autocast (losses and outputs stay float32)
    channels_last: bool = False  # models and input batches in NHWC memory order

    @classmethod
    def of(cls, cfg, device: torch.device | None = None) -> EvalRuntime:  # noqa: ANN001 - PipelineConfig
        """The runtime of ``cfg`` on ``device`` (default: ``evaluate.device`` resolved)."""
        device = resolve_device(cfg.evaluate.device) if device is None else device
        return cls(device, resolve_precision(cfg.pretrain.precision, device) == "bf16",
                   cfg.pretrain.channels_last)

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                              enabled=self.bf16)

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` moved to the device (and to channels-last when configured), in place."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch (B, C, H, W) in the configured memory order."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


CPU = EvalRuntime()
