"""One SimCLR optimisation step, independent of the engine (a plain loop or a Ray Train worker).

Batch in, metrics out: two views of every image, both encoded in ONE forward pass (so BN
sees both views with the same statistics), the configured contrastive loss (NT-Xent by default)
in float32, backward, optimiser step with the learning rate of the global step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from components.collectives import SumFn
from components.config import LossConfig
from components.losses import contrastive_loss_with_accuracy
from components.optim import set_lr

Augment = Callable[[Tensor, torch.Generator | None], Tensor]
# What TrainStep.phase_seconds accumulates (forward includes the BN all-reduces under global BN,
# loss the contrastive loss's gather, backward DDP's gradient all-reduce).
PHASES = ("views", "forward", "loss", "backward", "optimizer")


class TrainStep:
    """``__call__(images (B, C, H, W) float [0,1], step, generator) -> {loss, lr, contrastive_acc}``.

    ``model`` returns ``(h, z)`` (a SimCLRModel, possibly wrapped in DistributedDataParallel);
    ``schedule`` maps the global step to the learning rate (e.g. ``WarmupCosine``); ``augment``
    makes one view per call (``second_augment``, when given, makes the second view instead:
    the augmentation study's asymmetric pairs, ``augment.second_view_ops``); ``loss`` picks the contrastive loss (``pretrain.loss``; default
    NT-Xent with l2 norm) and ``temperature`` is its temperature (unused by the margin loss).
    ``precision="bf16"`` runs the forward pass under bf16 autocast (the loss stays float32);
    ``channels_last`` feeds the views in NHWC memory order (the model should be converted by
    the caller). ``sum_over_ranks``: the collective of the loss's gather (a shared-memory sum
    when every rank is on one host; None: torch.distributed). The model's train/eval mode is
    the caller's choice.
    Raises ``FloatingPointError`` (before the optimiser step) if the loss is not finite.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Callable[[int], float],
        augment: Augment,
        temperature: float,
        precision: Literal["fp32", "bf16"] = "fp32",
        channels_last: bool = False,
        loss: LossConfig | None = None,
        second_augment: Augment | None = None,
        sum_over_ranks: SumFn | None = None,
    ) -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.augment, self.temperature = augment, float(temperature)
        self.second_augment = second_augment if second_augment is not None else augment
        self.precision, self.channels_last = precision, channels_last
        self.loss = loss if loss is not None else LossConfig()
        self.sum_over_ranks = sum_over_ranks
        # Set to {} to accumulate seconds per phase (views, forward, loss, backward, optimizer).
        self.phase_seconds: dict[str, float] | None = None

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, C, H, W) -> (2B, C, S, S): all first views, then all second views."""
        with torch.no_grad():
            x = torch.cat([self.augment(images, generator),
                           self.second_augment(images, generator)])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __call__(
        self, images: Tensor, step: int, generator: torch.Generator | None = None
    ) -> dict[str, float]:
        lr = set_lr(self.optimizer, float(self.schedule(step)))
        marks = [time.perf_counter()]
        x = self.views(images, generator)
        marks.append(time.perf_counter())
        with torch.autocast(
            device_type=x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        ):
            _, z = self.model(x)
        marks.append(time.perf_counter())
        z1, z2 = z.float().chunk(2)  # bf16 under autocast -> float32: the loss is fp32 by design
        loss, acc = contrastive_loss_with_accuracy(
            z1, z2, self.loss.name, temperature=self.temperature,
            l2_normalize=self.loss.l2_normalize, margin=self.loss.margin,
            sum_over_ranks=self.sum_over_ranks)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite SimCLR loss {loss.item()} at step {step}")
        marks.append(time.perf_counter())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.perf_counter())
        self.optimizer.step()
        marks.append(time.perf_counter())
        if self.phase_seconds is not None:
            for name, start, end in zip(PHASES, marks, marks[1:], strict=False):
                self.phase_seconds[name] = self.phase_seconds.get(name, 0.0) + end - start
        return {"loss": loss.item(), "lr": lr, "contrastive_acc": acc.item()}
