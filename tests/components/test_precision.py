"""``precision: auto`` resolves to what the device computes natively; fixed settings stay."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components import precision
from components.config import config_from_dict
from components.evaluation.device import EvalRuntime
from components.precision import cpu_flags, resolve_precision

CPU = torch.device("cpu")


def test_fixed_settings_are_taken_as_given() -> None:
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"


def test_auto_follows_this_cpus_flags() -> None:
    native = bool(cpu_flags() & precision.NATIVE_BF16_FLAGS)
    assert resolve_precision("auto", CPU) == ("bf16" if native else "fp32")
    cfg = config_from_dict({"evaluate": {"device": "cpu"}, "pretrain": {"precision": "auto"}})
    assert EvalRuntime.of(cfg).bf16 is native


def test_cpu_flags_reads_the_flags_line(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\nflags\t: other\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_auto_is_fp32_on_a_cpu_without_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    assert resolve_precision("auto", CPU) == "fp32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "amx_bf16"})
    assert resolve_precision("auto", CPU) == "bf16"
