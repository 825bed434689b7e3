"""NT-Xent against a NumPy reference, its invariants, and single- vs two-process equivalence."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from components.losses import nt_xent, nt_xent_with_accuracy
from components.optim import LARS, WarmupCosine, param_groups


def reference_nt_xent(z1: np.ndarray, z2: np.ndarray, tau: float) -> tuple[float, float]:
    """Straight from the paper, in float64: mean over 2N anchors of -log softmax of the twin."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = z.shape[0]
    n = n2 // 2
    sim = z @ z.T / tau
    losses, hits = [], 0
    for i in range(n2):
        j = (i + n) % n2
        others = [k for k in range(n2) if k != i]
        row = sim[i, others]
        m = row.max()
        losses.append(-(sim[i, j] - m - math.log(np.exp(row - m).sum())))
        hits += others[int(np.argmax(row))] == j
    return float(np.mean(losses)), hits / n2


@pytest.mark.parametrize(
    ("n", "dim", "tau"), [(1, 3, 0.5), (2, 8, 0.1), (7, 16, 0.5), (16, 128, 0.2), (33, 5, 1.0)]
)
def test_matches_numpy_reference(n: int, dim: int, tau: float) -> None:
    gen = torch.Generator().manual_seed(n * 100 + dim)
    z1 = torch.randn(n, dim, generator=gen)
    z2 = z1 + 0.5 * torch.randn(n, dim, generator=gen)
    loss, acc = nt_xent_with_accuracy(z1, z2, tau)
    want_loss, want_acc = reference_nt_xent(z1.numpy(), z2.numpy(), tau)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(want_loss, rel=1e-5, abs=1e-5)
    assert acc.item() == pytest.approx(want_acc)


def test_symmetric_in_the_two_views() -> None:
    gen = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(9, 12, generator=gen), torch.randn(9, 12, generator=gen)
    assert nt_xent(z1, z2, 0.3).item() == pytest.approx(nt_xent(z2, z1, 0.3).item(), rel=1e-6)


@pytest.mark.parametrize("n", [1, 4, 50])
def test_identical_embeddings_give_log_of_2n_minus_1(n: int) -> None:
    z = torch.ones(n, 4)  # every view equals every other: uniform over the 2N - 1 candidates
    assert nt_xent(z, z, 0.5).item() == pytest.approx(-math.log(1 / (2 * n - 1)), rel=1e-6)


def test_stable_at_small_temperature_and_under_bf16() -> None:
    gen = torch.Generator().manual_seed(2)
    z1 = torch.randn(64, 32, generator=gen, requires_grad=True)
    z2 = torch.randn(64, 32, generator=gen, requires_grad=True)
    loss = nt_xent(z1, z2, 0.01)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    want, _ = reference_nt_xent(z1.detach().numpy(), z2.detach().numpy(), 0.01)
    assert loss.item() == pytest.approx(want, rel=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = nt_xent(z1.bfloat16(), z2.bfloat16(), 0.01)
    assert low.dtype == torch.float32 and torch.isfinite(low)


def test_perfect_pairs_have_full_accuracy_and_small_loss() -> None:
    z = torch.eye(8) * 10
    loss, acc = nt_xent_with_accuracy(z, z.clone(), 0.05)
    assert acc.item() == 1.0 and loss.item() < 1e-6


def test_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="must both be"):
        nt_xent(torch.randn(3, 4), torch.randn(4, 4), 0.5)


# ----------------------------------------------------------------------------- distributed
WORLD = 2
N_GLOBAL = 12
IN_DIM = 10


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _net() -> torch.nn.Module:
    """A projection net WITHOUT BatchNorm: train-mode BN normalises each worker's half batch with
    its own statistics, so a two-worker run would not equal a one-worker full-batch run (that is
    what synchronised BN is for, and torch's SyncBatchNorm is CUDA-only). Without BN, the only
    coupling between samples is the loss itself, which is what this test is about."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(IN_DIM, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8)
    ).double()


def _views() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    x1 = torch.randn(N_GLOBAL, IN_DIM, generator=gen, dtype=torch.float64)
    return x1, x1 + 0.3 * torch.randn(N_GLOBAL, IN_DIM, generator=gen, dtype=torch.float64)


def _loss_and_grads(net: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor, tau: float):
    loss, acc = nt_xent_with_accuracy(net(x1), net(x2), tau)
    net.zero_grad()
    loss.backward()
    return loss.detach(), acc, [p.grad.clone() for p in net.parameters()]


def _train(net: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor, tau: float):
    """A few LARS steps with warm-up; both views in one forward pass, as the train step does."""
    opt = LARS(param_groups(net, 1e-4), lr=1.0, momentum=0.9, trust_coefficient=0.01)
    sched = WarmupCosine(peak_lr=1.0, warmup_steps=2, total_steps=5)
    for step in range(4):
        sched.apply(opt, step)
        z1, z2 = net(torch.cat([x1, x2])).chunk(2)
        opt.zero_grad()
        nt_xent(z1, z2, tau).backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()]


def _worker(rank: int, port: int, out: str, taus: list[float]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        x1, x2 = _views()
        part = slice(rank * N_GLOBAL // WORLD, (rank + 1) * N_GLOBAL // WORLD)
        for tau in taus:
            loss, acc, grads = _loss_and_grads(_net(), x1[part], x2[part], tau)
            for grad in grads:  # what DistributedDataParallel does with parameter gradients
                dist.all_reduce(grad)
                grad /= WORLD
            params = _train(DistributedDataParallel(_net()), x1[part], x2[part], tau)
            torch.save(
                {"loss": loss, "acc": acc, "grads": grads, "params": params},
                f"{out}/rank{rank}-tau{tau}.pt",
            )
    finally:
        dist.destroy_process_group()


def test_two_gloo_workers_equal_one_worker_with_the_full_batch(tmp_path) -> None:
    """Loss, DDP-averaged gradients, and parameters after 4 LARS steps under real DDP."""
    taus = [0.5, 0.05]
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), taus), nprocs=WORLD, join=True)
    x1, x2 = _views()
    for tau in taus:
        want_loss, want_acc, want_grads = _loss_and_grads(_net(), x1, x2, tau)
        want_params = _train(_net(), x1, x2, tau)
        for rank in range(WORLD):
            got = torch.load(tmp_path / f"rank{rank}-tau{tau}.pt", weights_only=True)
            assert got["loss"].item() == pytest.approx(want_loss.item(), abs=1e-6)
            assert got["acc"].item() == pytest.approx(want_acc.item())
            for have, want in zip(got["grads"], want_grads, strict=True):
                torch.testing.assert_close(have, want, rtol=0, atol=1e-6)
            for have, want, start in zip(
                got["params"], want_params, _net().parameters(), strict=True
            ):
                torch.testing.assert_close(have, want, rtol=0, atol=1e-6)
                assert (have - start).abs().max() > 1e-3  # the steps did move the parameters
