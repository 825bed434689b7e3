"""Global BatchNorm with two REAL processes (gloo on loopback) against nn.BatchNorm on the whole batch.

Rank 0 holds the first 5 samples, rank 1 the other 3 (unequal shares: the counts are
all-reduced too). Each rank back-propagates ITS share of ``loss = sum(y * r)`` (``r`` fixed
random weights), as data-parallel training does. Compared with one process running
``nn.BatchNorm`` in train mode on all 8 samples: the outputs, the input gradients, the weight
and bias gradients summed over ranks (what DDP's all-reduce forms) and the running statistics.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from components.collectives import SharedMemorySum
from components.config import ModelConfig
from components.models.global_bn import GlobalBatchNorm, convert_batchnorm
from components.models.simclr import build_simclr_model

SPLIT = (5, 3)
TOL = {"atol": 1e-5, "rtol": 1e-5}


def _inputs(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shape = (sum(SPLIT), 6) if kind == "1d" else (sum(SPLIT), 6, 4, 4)
    x = torch.randn(shape, generator=gen) * 3 + 2  # off-centre: exercises the shifted sums
    r = torch.randn(shape, generator=gen)
    if kind.startswith("2d-channels-last"):
        x, r = (t.contiguous(memory_format=torch.channels_last) for t in (x, r))
    if kind.endswith("bf16"):  # activations as under bf16 autocast; parameters stay float32
        x, r = x.bfloat16(), r.bfloat16()
    return x, r


def _layer(kind: str) -> nn.modules.batchnorm._BatchNorm:
    torch.manual_seed(1)
    layer = nn.BatchNorm1d(6) if kind == "1d" else nn.BatchNorm2d(6)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
    return layer


def _worker(rank: int, port: int, kind: str, out_dir: str, collective: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=len(SPLIT))
    try:
        x, r = _inputs(kind)
        start = sum(SPLIT[:rank])
        rows = slice(start, start + SPLIT[rank])
        sum_over_ranks = (SharedMemorySum.for_process_group(2 * 6 + 1)
                          if collective == "shared-memory" else None)
        layer = convert_batchnorm(_layer(kind), "cpu", sum_over_ranks).train()
        assert isinstance(layer, GlobalBatchNorm)
        assert isinstance(layer.sum_over_ranks, SharedMemorySum) == (collective == "shared-memory")
        xs = x[rows].clone().requires_grad_()
        out = None
        for _ in range(2):  # two steps: the second uses a non-zero running-mean shift
            xs.grad = None
            layer.zero_grad()
            out = layer(xs)
            (out * r[rows]).sum().backward()
        torch.save({"y": out.detach(), "dx": xs.grad, "dw": layer.weight.grad,
                    "db": layer.bias.grad, "running_mean": layer.running_mean,
                    "running_var": layer.running_var,
                    "eval": layer.eval()(x[rows]).detach()},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _whole_batch(kind: str, x: torch.Tensor, r: torch.Tensor) -> tuple[
        nn.modules.batchnorm._BatchNorm, torch.Tensor, torch.Tensor]:
    """nn.BatchNorm in train mode on all samples, two steps: (layer, y, dx)."""
    layer = _layer(kind).train()
    xs = x.clone().requires_grad_()
    for _ in range(2):
        xs.grad = None
        layer.zero_grad()
        y = layer(xs)
        (y * r).sum().backward()
    return layer, y.detach(), xs.grad


def _spawn(kind: str, collective: str, tmp_path: Path) -> list[dict]:
    mp.spawn(_worker, args=(_free_port(), kind, str(tmp_path), collective), nprocs=len(SPLIT),
             join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(len(SPLIT))]


@pytest.mark.parametrize(("kind", "collective"), [
    ("2d", "gloo"), ("2d-channels-last", "gloo"), ("1d", "gloo"), ("2d", "shared-memory")])
def test_two_processes_match_batchnorm_on_the_whole_batch(kind: str, collective: str,
                                                          tmp_path: Path) -> None:
    ranks = _spawn(kind, collective, tmp_path)
    x, r = _inputs(kind)
    layer, y, dx = _whole_batch(kind, x, r)

    torch.testing.assert_close(torch.cat([p["y"] for p in ranks]), y, **TOL)
    torch.testing.assert_close(torch.cat([p["dx"] for p in ranks]), dx, **TOL)
    torch.testing.assert_close(sum(p["dw"] for p in ranks), layer.weight.grad, **TOL)
    torch.testing.assert_close(sum(p["db"] for p in ranks), layer.bias.grad, **TOL)
    for p in ranks:  # every rank holds the global running statistics (unbiased variance)
        torch.testing.assert_close(p["running_mean"], layer.running_mean, **TOL)
        torch.testing.assert_close(p["running_var"], layer.running_var, **TOL)
    layer.eval()  # eval mode: plain BN with the running statistics, no communication
    torch.testing.assert_close(torch.cat([p["eval"] for p in ranks]), layer(x).detach(), **TOL)


def test_bf16_activations_are_as_accurate_as_torch_batchnorm_in_bf16(tmp_path: Path) -> None:
    """bf16 channels-last input (as under autocast), float32 parameters: against the exact
    float32 answer on the whole batch, the two ranks' outputs and input gradients are within
    twice the error of nn.BatchNorm2d itself on the same bf16 input (one process)."""
    ranks = _spawn("2d-channels-last-bf16", "shared-memory", tmp_path)
    x, r = _inputs("2d-channels-last-bf16")
    exact, y_exact, dx_exact = _whole_batch("2d", x.float(), r.float())
    torch_bf16, y_bf16, dx_bf16 = _whole_batch("2d", x, r)
    for ours, theirs, truth in ((torch.cat([p["y"] for p in ranks]), y_bf16, y_exact),
                                (torch.cat([p["dx"] for p in ranks]), dx_bf16, dx_exact)):
        assert ours.dtype == torch.bfloat16
        error, reference = ((t.float() - truth).abs().max().item() for t in (ours, theirs))
        assert error <= 2 * reference + 1e-6, (error, reference)
    torch.testing.assert_close(sum(p["dw"] for p in ranks), exact.weight.grad, atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(sum(p["db"] for p in ranks), exact.bias.grad, atol=2e-2, rtol=1e-2)
    for p in ranks:
        torch.testing.assert_close(p["running_var"], exact.running_var, atol=1e-4, rtol=1e-4)


def test_without_a_process_group_it_is_plain_batchnorm() -> None:
    x, _ = _inputs("2d")
    plain, global_ = _layer("2d").train(), convert_batchnorm(_layer("2d")).train()
    torch.testing.assert_close(global_(x), plain(x), atol=0, rtol=0)
    torch.testing.assert_close(global_.running_var, plain.running_var, atol=0, rtol=0)


def test_converter_replaces_every_batchnorm_and_keeps_the_tensors() -> None:
    model = build_simclr_model(ModelConfig(arch="small", width=0.25), 1, 16)
    before = model.state_dict()
    params = {name: p for name, p in model.named_parameters()}
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    converted = convert_batchnorm(model)
    bns = [m for m in converted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == n_bn and all(isinstance(m, GlobalBatchNorm) for m in bns)
    assert any(isinstance(m, GlobalBatchNorm) for m in converted.head.modules())  # head too
    assert converted.state_dict().keys() == before.keys()  # checkpoints load into plain BN
    assert all(p is params[name] for name, p in converted.named_parameters())
