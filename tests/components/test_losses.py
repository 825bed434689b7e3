"""The contrastive losses against NumPy references of the paper's forms (values and gradients),
their invariants, NT-Xent's bit-identity with its original code, and single- vs two-process
equivalence."""

from __future__ import annotations

import math
import socket
from typing import Any, get_args

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

import components.losses as losses_module
from components.collectives import SharedMemorySum
from components.config import LossConfig, LossName
from components.losses import (
    LOSSES,
    SELF_MASK_LOGIT,
    contrastive_loss_with_accuracy,
    margin_triplet_with_accuracy,
    nt_logistic_with_accuracy,
    nt_xent,
    nt_xent_with_accuracy,
)
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


# ----------------------------------------------------------------------------- NT-Xent unchanged
# nt_xent_with_accuracy exactly as it was before the other losses existed (commit 11f8a9b),
# verbatim but for its name, with the module's unchanged _world and _gather. NT-Xent with l2 norm
# (the default config) must give bit-identical values and gradients: the pipeline depends on it.
_world, _gather = losses_module._world, losses_module._gather


def frozen_nt_xent_with_accuracy(z1: Tensor, z2: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """NT-Xent loss and contrastive top-1 accuracy.

    z1, z2: (n, D) projections of the two views of this worker's n images (any float dtype).
    Returns ``(loss, acc)``: float32 scalars, both over the GLOBAL batch of 2N = 2 n world
    anchors. ``acc`` is the fraction of anchors whose most similar other view is the twin
    (no gradient). Every worker must pass the same n.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (n, D), got {tuple(z1.shape)}, {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    world, rank = _world()
    n = z1.shape[0]
    # float32 whatever autocast does: the logits reach 1/tau and the softmax needs the range.
    with torch.autocast(device_type=z1.device.type, enabled=False):
        q1 = F.normalize(z1.float(), dim=1)
        q2 = F.normalize(z2.float(), dim=1)
        if world > 1:
            k1, k2 = _gather(q1, None), _gather(q2, None)  # None: torch.distributed's gather
        else:
            k1, k2 = q1, q2
        big_n = k1.shape[0]  # global N, built from actual shapes (a partial last batch is fine)
        keys = torch.cat([k1, k2], dim=0)  # (2N, D)
        anchors = torch.cat([q1, q2], dim=0)  # (2n, D): this worker's rows of the global 2N
        logits = anchors @ keys.T / temperature  # (2n, 2N)

        local = torch.arange(n, device=z1.device) + rank * n  # global index of each local image
        rows = torch.cat([local, local + big_n])  # global index of each anchor
        positives = torch.cat([local + big_n, local])  # its twin
        self_mask = F.one_hot(rows, 2 * big_n).bool()
        logits = logits.masked_fill(self_mask, SELF_MASK_LOGIT)
        loss = F.cross_entropy(logits, positives)  # mean over the 2n local anchors
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == positives).float().sum()
            if world > 1:
                stats = torch.stack([loss.detach() * (2 * n), correct])
                dist.all_reduce(stats)
                global_loss, correct = stats[0] / (2 * big_n), stats[1]
            else:
                global_loss = loss.detach()
            acc = correct / (2 * big_n)
        # Value: the global loss; gradient: the local mean (see the module docstring).
        loss = loss + (global_loss - loss.detach())
    return loss, acc


def _value_acc_grads(fn, z1: torch.Tensor, z2: torch.Tensor, *args: Any, **kwargs: Any):
    a, b = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
    loss, acc = fn(a, b, *args, **kwargs)
    loss.backward()
    return loss.detach(), acc, a.grad, b.grad


def _default_config_loss(z1: torch.Tensor, z2: torch.Tensor, tau: float):
    cfg = LossConfig()
    return contrastive_loss_with_accuracy(z1, z2, cfg.name, temperature=tau,
                                          l2_normalize=cfg.l2_normalize, margin=cfg.margin)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(("n", "dim", "tau"), [(1, 3, 0.5), (7, 16, 0.2), (32, 128, 0.05)])
def test_nt_xent_with_l2_norm_is_bit_identical_to_the_original(
    n: int, dim: int, tau: float, dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(n + dim)
    z1 = torch.randn(n, dim, generator=gen).to(dtype)
    z2 = (z1.float() + 0.5 * torch.randn(n, dim, generator=gen)).to(dtype)
    want = _value_acc_grads(frozen_nt_xent_with_accuracy, z1, z2, tau)
    for fn in (nt_xent_with_accuracy, _default_config_loss):
        got = _value_acc_grads(fn, z1, z2, tau)
        for have, ref in zip(got, want, strict=True):
            assert have.dtype == ref.dtype and torch.equal(have, ref)
    assert torch.equal(nt_xent(z1, z2, tau), want[0])


# ----------------------------------------------------------------------------- NumPy references
def _log_sigmoid(x: float) -> float:
    return -float(np.logaddexp(0.0, -x))


def _sigmoid(x: float) -> float:
    return float(np.exp(_log_sigmoid(x)))


def reference_loss(
    name: str, z1: np.ndarray, z2: np.ndarray, l2: bool, tau: float = 0.5, margin: float = 1.0
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The paper's Table 2 forms in float64, loop by loop: ``(loss, acc, dL/dz1, dL/dz2)``.

    Similarities s_ik = u_i . u_k, u = z / |z| (l2) or z; the twin of i is (i + N) mod 2N, the
    negatives every other view but i. Per anchor, with negatives averaged (see components.losses):
      nt_xent:        -s_i+/tau + log sum_{k != i} exp(s_ik/tau)
      nt_logistic:    -log sig(s_i+/tau) - mean_- log sig(-s_i-/tau)
      margin_triplet: mean_- max(s_i- - s_i+ + m, 0)
    averaged over the 2N anchors. The gradient is analytic: dL/ds_ik from the forms above (the
    terms of Table 2's gradient column), then dL/du = (C + C^T) u as every view is both an
    anchor and a key, then through the normalisation, dL/dz = (dL/du - u (u . dL/du)) / |z|.
    """
    z = np.concatenate([z1, z2]).astype(np.float64)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    u = z / norms if l2 else z.copy()
    n2 = u.shape[0]
    n = n2 // 2
    s = u @ u.T
    coef = np.zeros_like(s)  # dL/ds_ik, L the mean over anchors
    losses, hits = [], 0
    for i in range(n2):
        p = (i + n) % n2
        others = [k for k in range(n2) if k != i]
        negatives = [k for k in others if k != p]
        hits += others[int(np.argmax(s[i, others]))] == p
        if name == "nt_xent":
            logits = s[i, others] / tau
            top = logits.max()
            log_z = top + math.log(np.exp(logits - top).sum())
            losses.append(log_z - s[i, p] / tau)
            for k, logit in zip(others, logits, strict=True):
                coef[i, k] += math.exp(logit - log_z) / tau
            coef[i, p] -= 1.0 / tau
        elif name == "nt_logistic":
            loss = -_log_sigmoid(s[i, p] / tau)
            coef[i, p] -= _sigmoid(-s[i, p] / tau) / tau
            for k in negatives:
                loss -= _log_sigmoid(-s[i, k] / tau) / len(negatives)
                coef[i, k] += _sigmoid(s[i, k] / tau) / tau / len(negatives)
            losses.append(loss)
        elif name == "margin_triplet":
            loss = 0.0
            for k in negatives:
                hinge = s[i, k] - s[i, p] + margin
                if hinge > 0:
                    loss += hinge / len(negatives)
                    coef[i, k] += 1.0 / len(negatives)
                    coef[i, p] -= 1.0 / len(negatives)
            losses.append(loss)
        else:
            raise ValueError(name)
    coef /= n2
    grad_u = (coef + coef.T) @ u
    grad_z = (grad_u - u * (u * grad_u).sum(axis=1, keepdims=True)) / norms if l2 else grad_u
    return float(np.mean(losses)), hits / n2, grad_z[:n], grad_z[n:]


ALL_LOSSES = [(name, l2) for name in ("nt_xent", "nt_logistic", "margin_triplet")
              for l2 in (True, False)]


@pytest.mark.parametrize(("name", "l2"), ALL_LOSSES)
def test_numpy_reference_gradient_matches_its_finite_differences(name: str, l2: bool) -> None:
    """The reference's analytic gradient is right: central differences of its loss, float64."""
    rng = np.random.default_rng(7)
    z1 = rng.normal(size=(3, 4))
    z2 = z1 + 0.5 * rng.normal(size=(3, 4))
    _, _, g1, g2 = reference_loss(name, z1, z2, l2, tau=0.3, margin=0.8)
    eps = 1e-6
    for z, grad in ((z1, g1), (z2, g2)):
        numeric = np.zeros_like(z)
        for idx in np.ndindex(z.shape):
            saved = z[idx]
            z[idx] = saved + eps
            up = reference_loss(name, z1, z2, l2, tau=0.3, margin=0.8)[0]
            z[idx] = saved - eps
            down = reference_loss(name, z1, z2, l2, tau=0.3, margin=0.8)[0]
            z[idx] = saved
            numeric[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(("name", "l2"), ALL_LOSSES)
@pytest.mark.parametrize(
    ("n", "dim", "tau", "margin"), [(1, 3, 0.5, 1.0), (2, 8, 0.1, 0.5), (7, 16, 0.5, 1.0),
                                    (16, 32, 0.2, 0.3), (33, 5, 1.0, 2.0)]
)
def test_matches_numpy_reference_in_value_and_gradient(
    name: str, l2: bool, n: int, dim: int, tau: float, margin: float
) -> None:
    gen = torch.Generator().manual_seed(n * 100 + dim)
    scale = 1.0 if l2 else 1 / math.sqrt(dim)  # raw dot products of order 1 without the norm
    z1 = scale * torch.randn(n, dim, generator=gen)
    z2 = z1 + 0.5 * scale * torch.randn(n, dim, generator=gen)
    loss, acc, g1, g2 = _value_acc_grads(contrastive_loss_with_accuracy, z1, z2, name,
                                         temperature=tau, l2_normalize=l2, margin=margin)
    want_loss, want_acc, want_g1, want_g2 = reference_loss(name, z1.numpy(), z2.numpy(), l2,
                                                           tau, margin)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(want_loss, rel=1e-5, abs=1e-6)
    assert acc.item() == pytest.approx(want_acc)
    for have, want in ((g1, want_g1), (g2, want_g2)):
        torch.testing.assert_close(have, torch.from_numpy(want).float(), rtol=1e-4, atol=1e-6)


def test_registry_names_are_the_config_choices() -> None:
    assert set(LOSSES) == set(get_args(LossName))


@pytest.mark.parametrize(("name", "l2"), ALL_LOSSES)
def test_every_loss_is_symmetric_in_the_views_and_scale_invariant_only_with_l2(
    name: str, l2: bool
) -> None:
    gen = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(9, 12, generator=gen), torch.randn(9, 12, generator=gen)

    def value(a: torch.Tensor, b: torch.Tensor) -> float:
        return contrastive_loss_with_accuracy(a, b, name, temperature=0.3, l2_normalize=l2,
                                              margin=0.5)[0].item()

    assert value(z1, z2) == pytest.approx(value(z2, z1), rel=1e-6)
    scaled = value(3 * z1, 3 * z2)
    if l2:
        assert scaled == pytest.approx(value(z1, z2), rel=1e-5)
    else:
        assert scaled != pytest.approx(value(z1, z2), rel=1e-3)


def test_one_image_has_no_negatives() -> None:
    """Global N = 1: only the positive term is left (nt_logistic), no triplet at all (margin)."""
    z1, z2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]])
    loss, acc = nt_logistic_with_accuracy(z1, z2, 0.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.6 / 0.5)), rel=1e-6)
    assert acc.item() == 1.0
    loss, acc = margin_triplet_with_accuracy(z1, z2, 1.0)
    assert loss.item() == 0.0 and acc.item() == 1.0


def test_margin_triplet_is_zero_once_every_negative_is_a_margin_away() -> None:
    z = torch.eye(4)  # twins identical (s+ = 1), negatives orthogonal (s- = 0)
    assert margin_triplet_with_accuracy(z, z.clone(), 0.999)[0].item() == 0.0
    # with margin 1.5 every one of the 2N - 2 negatives violates it by exactly 0.5
    assert margin_triplet_with_accuracy(z, z.clone(), 1.5)[0].item() == pytest.approx(0.5)


@pytest.mark.parametrize(("name", "l2"), ALL_LOSSES)
def test_new_losses_are_float32_and_finite_under_bf16_autocast(name: str, l2: bool) -> None:
    gen = torch.Generator().manual_seed(5)
    z1 = torch.randn(16, 8, generator=gen, requires_grad=True)
    z2 = torch.randn(16, 8, generator=gen, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, acc = contrastive_loss_with_accuracy(z1.bfloat16(), z2.bfloat16(), name,
                                                   temperature=0.05, l2_normalize=l2)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and 0.0 <= acc.item() <= 1.0
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()


def test_bad_arguments_are_refused() -> None:
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match="unknown contrastive loss 'xent'"):
        contrastive_loss_with_accuracy(z, z, "xent", temperature=0.5)
    with pytest.raises(ValueError, match="margin must be > 0"):
        contrastive_loss_with_accuracy(z, z, "margin_triplet", temperature=0.5, margin=0.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        contrastive_loss_with_accuracy(z, z, "nt_logistic", temperature=0.0)
    with pytest.raises(ValueError, match="must both be"):
        margin_triplet_with_accuracy(z, torch.randn(4, 4), 1.0)



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


# (name, l2_normalize, temperature, margin): NT-Xent's two original temperatures, then every
# other loss and normalisation of Table 4.
CASES = [
    ("nt_xent", True, 0.5, 1.0),
    ("nt_xent", True, 0.05, 1.0),
    ("nt_xent", False, 0.5, 1.0),
    ("nt_logistic", True, 0.2, 1.0),
    ("nt_logistic", False, 1.0, 1.0),
    ("margin_triplet", True, 0.5, 1.0),
    ("margin_triplet", False, 0.5, 1.0),
]


def _loss_fn(case: tuple[str, bool, float, float], frozen: bool = False, sum_over_ranks=None):
    """``(z1, z2) -> (loss, acc)`` of a case; ``frozen``: the original NT-Xent (NT-Xent cases with
    l2); ``sum_over_ranks``: the collective of the gather (None: torch.distributed)."""
    name, l2, tau, margin = case
    if frozen:
        return lambda z1, z2: frozen_nt_xent_with_accuracy(z1, z2, tau)
    return lambda z1, z2: contrastive_loss_with_accuracy(
        z1, z2, name, temperature=tau, l2_normalize=l2, margin=margin,
        sum_over_ranks=sum_over_ranks)


def _loss_and_grads(net: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor, loss_fn):
    loss, acc = loss_fn(net(x1), net(x2))
    net.zero_grad()
    loss.backward()
    return loss.detach(), acc, [p.grad.clone() for p in net.parameters()]


def _train(net: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor, loss_fn):
    """A few LARS steps with warm-up; both views in one forward pass, as the train step does."""
    opt = LARS(param_groups(net, 1e-4), lr=1.0, momentum=0.9, trust_coefficient=0.01)
    sched = WarmupCosine(peak_lr=1.0, warmup_steps=2, total_steps=5)
    for step in range(4):
        sched.apply(opt, step)
        z1, z2 = net(torch.cat([x1, x2])).chunk(2)
        opt.zero_grad()
        loss_fn(z1, z2)[0].backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()]


def _ddp_loss_and_grads(x1: torch.Tensor, x2: torch.Tensor, loss_fn):
    loss, acc, grads = _loss_and_grads(_net(), x1, x2, loss_fn)
    for grad in grads:  # what DistributedDataParallel does with parameter gradients
        dist.all_reduce(grad)
        grad /= WORLD
    return {"loss": loss, "acc": acc, "grads": grads}


def _worker(rank: int, port: int, out: str, cases: list[tuple[str, bool, float, float]]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        x1, x2 = _views()
        part = slice(rank * N_GLOBAL // WORLD, (rank + 1) * N_GLOBAL // WORLD)
        shared = SharedMemorySum.for_process_group(2 * N_GLOBAL * 64)
        for index, case in enumerate(cases):
            result = _ddp_loss_and_grads(x1[part], x2[part], _loss_fn(case))
            result["shared memory"] = _ddp_loss_and_grads(
                x1[part], x2[part], _loss_fn(case, sum_over_ranks=shared))
            result["params"] = _train(DistributedDataParallel(_net()), x1[part], x2[part],
                                      _loss_fn(case))
            if case[0] == "nt_xent" and case[1]:
                result["frozen"] = _ddp_loss_and_grads(x1[part], x2[part], _loss_fn(case, True))
            torch.save(result, f"{out}/rank{rank}-case{index}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_workers_equal_one_worker_with_the_full_batch(tmp_path) -> None:
    """Every loss: value, DDP-averaged gradients, and parameters after 4 LARS steps under real
    DDP. NT-Xent with l2 norm also equals, bit for bit, the original code under two workers;
    every loss gathered through shared memory equals, bit for bit, the torch.distributed gather."""
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), CASES), nprocs=WORLD, join=True)
    x1, x2 = _views()
    for index, case in enumerate(CASES):
        want_loss, want_acc, want_grads = _loss_and_grads(_net(), x1, x2, _loss_fn(case))
        want_params = _train(_net(), x1, x2, _loss_fn(case))
        for rank in range(WORLD):
            got = torch.load(tmp_path / f"rank{rank}-case{index}.pt", weights_only=True)
            assert got["loss"].item() == pytest.approx(want_loss.item(), abs=1e-6), case
            assert got["acc"].item() == pytest.approx(want_acc.item()), case
            for have, want in zip(got["grads"], want_grads, strict=True):
                torch.testing.assert_close(have, want, rtol=0, atol=1e-6)
            for have, want, start in zip(
                got["params"], want_params, _net().parameters(), strict=True
            ):
                torch.testing.assert_close(have, want, rtol=0, atol=1e-6)
                assert (have - start).abs().max() > 1e-3, case  # the steps did move them
            shared = got["shared memory"]
            assert torch.equal(got["loss"], shared["loss"]), case
            assert torch.equal(got["acc"], shared["acc"]), case
            for have, want in zip(got["grads"], shared["grads"], strict=True):
                assert torch.equal(have, want), case
            if "frozen" in got:
                frozen = got["frozen"]
                assert torch.equal(got["loss"], frozen["loss"])
                assert torch.equal(got["acc"], frozen["acc"])
                for have, want in zip(got["grads"], frozen["grads"], strict=True):
                    assert torch.equal(have, want)
