"""The numeric format of forward passes: ``precision: auto`` takes bf16 where the hardware has it.

``fp32`` and ``bf16`` are taken as given; ``auto`` resolves per device, on the machine that
runs the work (a Ray worker on a GPU node resolves for its GPU): bf16 on a CUDA device that
supports it and on a CPU with native bf16 arithmetic (the ``avx512_bf16`` or ``amx_bf16``
flags; with channels-last, pretraining on such a CPU ran 1.5x fp32 NCHW, about what fp32
channels-last alone gave: docs/benchmarks.md), fp32 elsewhere (an AVX2 CPU would emulate bf16).
Under bf16 only the forward passes run under autocast; losses and outputs stay float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from components.config import Precision

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The first CPU's feature flags (empty where ``cpuinfo`` is missing, e.g. not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def resolve_precision(setting: Precision, device: torch.device) -> Literal["fp32", "bf16"]:
    """``setting`` with ``auto`` replaced by what ``device`` computes natively."""
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu" and cpu_flags() & NATIVE_BF16_FLAGS:
        return "bf16"
    return "fp32"
