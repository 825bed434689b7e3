"""The engine-agnostic SimCLR train step with the real model, augmentation, loss and LARS."""

from __future__ import annotations

import pytest
import torch

from components.augment import SimCLRAugment
from components.config import AugmentConfig, LossConfig, ModelConfig, OptimConfig
from components.losses import nt_xent_with_accuracy
from components.models.simclr import build_simclr_model
from components.optim import WarmupCosine, build_optimizer, peak_lr
from components.training.step import TrainStep

BATCH = 16


def _setup(precision: str = "fp32", channels_last: bool = False, seed: int = 0,
           loss: LossConfig | None = None):
    torch.manual_seed(seed)
    model = build_simclr_model(ModelConfig(arch="small", width=0.25), 1, 16)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optim_cfg = OptimConfig(warmup_epochs=1)
    opt = build_optimizer(model, optim_cfg, BATCH)
    sched = WarmupCosine(peak_lr(optim_cfg, BATCH), 2, 20)
    aug = SimCLRAugment(AugmentConfig(crop_scale=(0.5, 1.0)), 16, 1)
    return model, opt, sched, TrainStep(model, opt, sched, aug, 0.5, precision, channels_last,
                                        loss=loss)


def _images(n: int = BATCH) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(1))


def test_metrics_and_lr_of_the_global_step() -> None:
    model, opt, sched, step = _setup()
    out = step(_images(), 7, torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "lr", "contrastive_acc"}
    assert out["lr"] == pytest.approx(sched.lr_at(7)) and opt.param_groups[0]["lr"] == out["lr"]
    assert 0.0 <= out["contrastive_acc"] <= 1.0
    assert out["loss"] > 0 and isinstance(out["loss"], float)


def test_both_views_go_through_one_forward_pass() -> None:
    model, _, _, step = _setup()
    seen = []
    model.encoder.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    step(_images(), 0)
    assert seen == [2 * BATCH]


def test_views_are_first_all_view1_then_all_view2() -> None:
    *_, step = _setup()
    x = _images(4)
    views = step.views(x, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    want = torch.cat([step.augment(x, gen), step.augment(x, gen)])
    assert torch.equal(views, want)


def test_an_identity_second_view_leaves_the_first_view_alone() -> None:
    """``second_augment`` (``augment.second_view_ops``) makes the second view: with no ops it
    is the image itself (the augmentation study's untouched branch), and the first view is
    the one the symmetric step draws (the identity draws no random numbers)."""
    model, opt, sched, step = _setup()
    identity = SimCLRAugment(AugmentConfig(ops=[]), 16, 1)
    asymmetric = TrainStep(model, opt, sched, step.augment, 0.5, second_augment=identity)
    x = _images(4)
    views = asymmetric.views(x, torch.Generator().manual_seed(3))
    symmetric = step.views(x, torch.Generator().manual_seed(3))
    assert torch.equal(views[:4], symmetric[:4]) and torch.equal(views[4:], x)


def test_loss_falls_on_a_fixed_batch_and_parameters_move() -> None:
    model, _, _, step = _setup()
    before = [p.detach().clone() for p in model.parameters()]
    losses = [step(_images(), s, torch.Generator().manual_seed(0))["loss"] for s in range(8)]
    assert losses[-1] < losses[0]
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_seeded_runs_are_identical() -> None:
    runs = []
    for _ in range(2):
        model, _, _, step = _setup()
        out = [step(_images(), s, torch.Generator().manual_seed(s)) for s in range(3)]
        runs.append((out, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        assert torch.equal(a, b)


def test_bf16_and_channels_last() -> None:
    _, _, _, step = _setup("bf16", channels_last=True)
    out = step(_images(), 3, torch.Generator().manual_seed(0))
    assert torch.isfinite(torch.tensor(out["loss"]))
    assert step.views(_images(2)).is_contiguous(memory_format=torch.channels_last)


def test_non_finite_loss_stops_before_the_update() -> None:
    model, _, _, step = _setup()
    with torch.no_grad():
        model.head.out.weight.fill_(float("nan"))
    before = [p.detach().clone() for p in model.encoder.parameters()]
    with pytest.raises(FloatingPointError, match="step 5"):
        step(_images(), 5)
    for a, b in zip(before, model.encoder.parameters(), strict=True):
        assert torch.equal(a, b)


def test_bf16_autocast_gives_the_loss_float32_projections(monkeypatch: pytest.MonkeyPatch) -> None:
    """The head's z comes out of autocast in bf16; NT-Xent must receive float32 (design: the
    logits reach 1/tau and the softmax needs the range). The real loss runs; we only look."""
    import components.training.step as step_module

    model, _, _, step = _setup("bf16")
    head_dtypes, loss_dtypes = [], []
    model.head.register_forward_hook(lambda mod, args, out: head_dtypes.append(out.dtype))
    real_loss = step_module.contrastive_loss_with_accuracy

    def observed(z1: torch.Tensor, z2: torch.Tensor, *args, **kwargs):
        loss_dtypes.append((z1.dtype, z2.dtype))
        return real_loss(z1, z2, *args, **kwargs)

    monkeypatch.setattr(step_module, "contrastive_loss_with_accuracy", observed)
    out = step(_images(), 0, torch.Generator().manual_seed(0))
    assert head_dtypes == [torch.bfloat16]  # autocast was really on
    assert loss_dtypes == [(torch.float32, torch.float32)]
    assert torch.isfinite(torch.tensor(out["loss"]))


def _three_steps(step: TrainStep, model: torch.nn.Module):
    out = [step(_images(), s, torch.Generator().manual_seed(s)) for s in range(3)]
    return out, [p.detach().clone() for p in model.parameters()]


def test_default_loss_is_exactly_nt_xent_with_accuracy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default step (no ``loss`` given, or ``LossConfig()``) is bit for bit the step that
    calls nt_xent_with_accuracy(z1, z2, temperature) directly, as it did before losses were
    configurable (test_losses shows that function equals its original code)."""
    import components.training.step as step_module

    runs = [_three_steps(step, model) for model, _, _, step in (_setup(), _setup(loss=LossConfig()))]
    monkeypatch.setattr(step_module, "contrastive_loss_with_accuracy",
                        lambda z1, z2, name, *, temperature, **_: nt_xent_with_accuracy(
                            z1, z2, temperature))
    model, _, _, step = _setup()
    runs.append(_three_steps(step, model))
    for out, params in runs[1:]:
        assert out == runs[0][0]
        for a, b in zip(params, runs[0][1], strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("loss", [
    LossConfig(name="nt_xent", l2_normalize=False),
    LossConfig(name="nt_logistic"),
    LossConfig(name="nt_logistic", l2_normalize=False),
    LossConfig(name="margin_triplet", margin=0.5),
    LossConfig(name="margin_triplet", l2_normalize=False, margin=2.0),
])
def test_the_configured_loss_is_the_one_trained(loss: LossConfig,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import components.training.step as step_module

    calls = []
    real_loss = step_module.contrastive_loss_with_accuracy

    def observed(z1: torch.Tensor, z2: torch.Tensor, name: str, **kwargs):
        calls.append((name, kwargs))
        return real_loss(z1, z2, name, **kwargs)

    monkeypatch.setattr(step_module, "contrastive_loss_with_accuracy", observed)
    model, _, _, step = _setup(loss=loss)
    before = [p.detach().clone() for p in model.parameters()]
    out = step(_images(), 3, torch.Generator().manual_seed(0))
    assert calls == [(loss.name, {"temperature": 0.5, "l2_normalize": loss.l2_normalize,
                                  "margin": loss.margin, "sum_over_ranks": None})]
    assert torch.isfinite(torch.tensor(out["loss"])) and 0.0 <= out["contrastive_acc"] <= 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
