"""LARS against a hand computation, the lr scaling rule, and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from components.config import OptimConfig
from components.optim import LARS, WarmupCosine, build_optimizer, param_groups, peak_lr


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_groups_exclude_biases_and_norm_parameters() -> None:
    groups = param_groups(_tiny_model(), weight_decay=0.1)
    adapted = [g for g in groups if not g["lars_exclude"]][0]
    excluded = [g for g in groups if g["lars_exclude"]][0]
    assert [p.shape for p in adapted["params"]] == [torch.Size([4, 3])]
    assert len(excluded["params"]) == 3 and excluded["weight_decay"] == 0.0


def test_one_lars_step_matches_the_formula_by_hand() -> None:
    model = _tiny_model()
    lr, mom, wd, eta = 0.7, 0.9, 0.01, 0.002
    opt = LARS(param_groups(model, wd), lr=lr, momentum=mom, trust_coefficient=eta)
    weight, bias = model[0].weight, model[0].bias
    bn_weight = model[1].weight
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    # two steps so that the momentum buffer matters
    grads = []
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(8, 3)).pow(2).sum().backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
        opt.step()

    def by_hand(name: str, adapted: bool) -> torch.Tensor:
        w = before[name].double()
        v = torch.zeros_like(w)
        for g in grads:
            g = g[name].double()
            scale = lr
            if adapted:
                g = g + wd * w
                scale = lr * eta * w.norm() / g.norm()
            v = mom * v + scale * g
            w = w - v
        return w

    torch.testing.assert_close(weight.detach().double(), by_hand("0.weight", True), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bias.detach().double(), by_hand("0.bias", False), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bn_weight.detach().double(), by_hand("1.weight", False), rtol=1e-6, atol=1e-6)


def test_lars_trust_ratio_is_one_for_zero_weights() -> None:
    param = nn.Parameter(torch.zeros(2, 2))
    param.grad = torch.ones(2, 2)
    LARS([param], lr=0.5, momentum=0.0).step()
    torch.testing.assert_close(param.detach(), torch.full((2, 2), -0.5))


def test_peak_lr_scaling_rules() -> None:
    assert peak_lr(OptimConfig(lr_scaling="linear", base_lr=0.3), 512) == pytest.approx(0.6)
    assert peak_lr(OptimConfig(lr_scaling="sqrt", base_lr=0.075), 4096) == pytest.approx(4.8)


def test_build_optimizer_kinds() -> None:
    model = _tiny_model()
    lars = build_optimizer(model, OptimConfig(), 256)
    assert isinstance(lars, LARS) and lars.param_groups[0]["lr"] == pytest.approx(0.3)
    sgd = build_optimizer(model, OptimConfig(name="sgd", weight_decay=1e-4), 256)
    assert isinstance(sgd, torch.optim.SGD)
    assert sorted(g["weight_decay"] for g in sgd.param_groups) == [0.0, 1e-4]


def test_schedule_endpoints() -> None:
    sched = WarmupCosine(peak_lr=2.0, warmup_steps=10, total_steps=110)
    assert sched.lr_at(0) == pytest.approx(0.2)
    assert sched.lr_at(9) == pytest.approx(2.0)
    assert sched.lr_at(10) == pytest.approx(2.0)
    assert sched.lr_at(60) == pytest.approx(1.0)  # half way through the cosine
    assert sched.lr_at(109) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert sched.lr_at(110) == 0.0 and sched.lr_at(10_000) == 0.0
    lrs = [sched.lr_at(s) for s in range(110)]
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_schedule_without_warmup_and_from_epochs() -> None:
    assert WarmupCosine(1.0, 0, 5).lr_at(0) == pytest.approx(1.0)
    sched = WarmupCosine.from_epochs(1.0, warmup_epochs=0.5, epochs=4, steps_per_epoch=10)
    assert (sched.warmup_steps, sched.total_steps) == (5, 40)
    with pytest.raises(ValueError):
        WarmupCosine(1.0, 11, 10)


def test_resumed_run_continues_the_exact_lr_sequence() -> None:
    """A run interrupted at step 17 and resumed from its optimizer state applies the same lrs."""

    def run(steps: range, model: nn.Module, opt: torch.optim.Optimizer) -> list[float]:
        sched = WarmupCosine(peak_lr(OptimConfig(), 256), 8, 40)  # a fresh object, as on resume
        seen = []
        for step in steps:
            seen.append(sched.apply(opt, step))
            opt.zero_grad()
            model(torch.full((4, 3), float(step))).pow(2).mean().backward()
            opt.step()
        return seen

    model = _tiny_model()
    full = run(range(40), model, build_optimizer(model, OptimConfig(), 256))

    model2 = _tiny_model()
    opt2 = build_optimizer(model2, OptimConfig(), 256)
    first = run(range(17), model2, opt2)
    state = {"model": model2.state_dict(), "opt": opt2.state_dict()}
    model3 = _tiny_model()
    model3.load_state_dict(state["model"])
    opt3 = build_optimizer(model3, OptimConfig(), 256)
    opt3.load_state_dict(state["opt"])
    second = run(range(17, 40), model3, opt3)
    assert first + second == full
    for a, b in zip(model.parameters(), model3.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
