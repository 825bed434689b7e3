"""LARS, the learning-rate scaling rule and the warm-up + cosine schedule of SimCLR.

LARS here follows the SimCLR reference implementation (classic momentum, the learning rate
inside the momentum buffer)::

    g = grad + weight_decay * w            (adapted parameters only)
    trust = eta * ||w|| / ||g||            (1 if either norm is 0; adapted parameters only)
    v = momentum * v + lr * trust * g
    w = w - v

Biases and normalisation parameters (every parameter with fewer than 2 dimensions) are
excluded from both the weight decay and the trust-ratio adaptation: for them
``v = momentum * v + lr * grad``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from components.config import OptimConfig


def is_excluded(name: str, param: Tensor) -> bool:
    """Biases and normalisation parameters: no weight decay, no trust ratio."""
    return param.ndim < 2 or name.endswith(".bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: adapted weights and excluded biases / norm parameters (``lars_exclude``)."""
    adapted, excluded = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (excluded if is_excluded(name, param) else adapted).append(param)
    groups = [
        {"params": adapted, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": excluded, "weight_decay": 0.0, "lars_exclude": True},
    ]
    return [group for group in groups if group["params"]]


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017) as used by SimCLR.

    Param groups may set ``lars_exclude=True`` to skip weight decay and adaptation.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError("LARS: lr, momentum, weight_decay must be >= 0, trust_coefficient > 0")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "lars_exclude": False,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                scale = lr
                if not group["lars_exclude"]:
                    if group["weight_decay"]:
                        grad = grad.add(param, alpha=group["weight_decay"])
                    w_norm = torch.linalg.vector_norm(param)
                    g_norm = torch.linalg.vector_norm(grad)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        group["trust_coefficient"] * w_norm / g_norm,
                        torch.ones_like(w_norm),
                    )
                    scale = trust * lr
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(grad * scale)
                param.sub_(buf)
        return loss


def peak_lr(cfg: OptimConfig, batch_size: int) -> float:
    """Scaled learning rate: ``base_lr * B / 256`` (linear) or ``base_lr * sqrt(B)`` (sqrt)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    if cfg.lr_scaling == "linear":
        return cfg.base_lr * batch_size / 256
    return cfg.base_lr * math.sqrt(batch_size)


def build_optimizer(model: nn.Module, cfg: OptimConfig, batch_size: int) -> torch.optim.Optimizer:
    """LARS or SGD (momentum) over ``model``, excluding biases / norm parameters from weight decay.

    ``batch_size`` is the GLOBAL batch; the initial lr is the peak lr (the schedule overrides it).
    """
    lr = peak_lr(cfg, batch_size)
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient)
    for group in groups:
        group.pop("lars_exclude")
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Every group's lr := ``lr`` (times ``group["lr_scale"]`` where set: per-group peaks, e.g.
    fine-tuning's encoder and head); returns ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr_scale"] * lr if "lr_scale" in group else lr
    return lr


class WarmupCosine:
    """Linear warm-up to ``peak_lr`` over ``warmup_steps``, then cosine decay to ``end_lr``.

    ``lr_at(step)`` depends only on the global step (0-based), so a resumed run that restarts
    from step k continues the exact sequence. Warm-up: ``peak * (step + 1) / warmup_steps``
    (the first step is not wasted at lr 0; the last warm-up step reaches the peak); then
    ``end + (peak - end) * (1 + cos(pi * t)) / 2`` with ``t = (step - warmup) / (total - warmup)``,
    and ``end_lr`` from ``total_steps`` on.
    """

    def __init__(
        self, peak_lr: float, warmup_steps: int, total_steps: int, end_lr: float = 0.0
    ) -> None:
        if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
            raise ValueError(
                f"need 0 <= warmup_steps <= total_steps and total_steps > 0, "
                f"got {warmup_steps}, {total_steps}"
            )
        self.peak_lr = float(peak_lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.end_lr = float(end_lr)

    @classmethod
    def from_epochs(
        cls, peak_lr: float, warmup_epochs: float, epochs: int, steps_per_epoch: int
    ) -> WarmupCosine:
        total = epochs * steps_per_epoch
        return cls(peak_lr, min(total, round(warmup_epochs * steps_per_epoch)), total)

    def lr_at(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        if step >= self.total_steps:
            return self.end_lr
        t = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.end_lr + (self.peak_lr - self.end_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr to ``lr_at(step)`` (times the group's ``lr_scale`` if it has
        one) and return ``lr_at(step)``: the one place a schedule sets learning rates."""
        return set_lr(optimizer, self.lr_at(step))

    def __call__(self, step: int) -> float:
        return self.lr_at(step)
