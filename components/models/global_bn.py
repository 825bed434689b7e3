"""Global BatchNorm across data-parallel workers (SimCLR section 2.2, "Global BN").

With data parallelism every worker sees B/world images; a plain BatchNorm normalises with its
own worker's statistics, which differ from the global batch's and let the contrastive task
leak information through the local statistics. :class:`GlobalBatchNorm` normalises with the
mean and biased variance of the WHOLE global batch, on any backend (gloo on CPU included,
where ``torch.nn.SyncBatchNorm`` refuses CPU tensors):

- one fused, differentiable all-reduce per layer of ``[sum(x - K), sum((x - K)^2), count]``
  per channel (``K`` = the layer's running mean, a constant shift equal on every rank that
  keeps the one-pass variance accurate); its backward all-reduces the gradients, so input and
  weight gradients are those of the global batch (same convention as the gathered NT-Xent);
- running_mean / running_var are updated exactly as ``nn.BatchNorm`` does in train mode with
  the global batch (unbiased variance, ``momentum`` or the cumulative average);
- in eval mode, or without an initialised process group of more than one worker, it is plain
  BatchNorm (no communication, so one rank alone may run it, e.g. the kNN monitor).

:func:`convert_batchnorm` swaps every BatchNorm1d/2d/3d of a model for the global version
(``nn.SyncBatchNorm.convert_sync_batchnorm`` on GPU), keeping parameters and buffers.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _all_reduce_sum(x: Tensor) -> Tensor:
    """Differentiable sum over ranks (backward: the sum of every rank's gradient)."""
    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated", category=FutureWarning)
        return all_reduce(x, op=dist.ReduceOp.SUM)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """``forward(x: (N, C, *)) -> (N, C, *)``; BatchNorm over the global batch in train mode."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats or _world_size() == 1:
            return super().forward(x)
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = (1, channels) + (1,) * (x.dim() - 2)
        # Statistics in float32 whatever the activation dtype (bf16 autocast).
        xf = x.float()
        shift = (self.running_mean.detach().float() if self.running_mean is not None
                 else torch.zeros(channels, device=x.device))
        centred = xf - shift.view(shape)
        count = torch.full((1,), float(x.numel() // channels), device=x.device)
        stats = _all_reduce_sum(torch.cat([centred.sum(dims), centred.square().sum(dims), count]))
        total = stats[-1]
        shifted_mean = stats[:channels] / total
        var = (stats[channels:2 * channels] / total - shifted_mean.square()).clamp_min(0.0)
        mean = shifted_mean + shift
        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), total.detach())
        y = (xf - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, total: Tensor) -> None:
        # momentum None: the cumulative moving average, as nn.BatchNorm
        factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                  else self.momentum)
        unbiased = var * (total / (total - 1).clamp_min(1.0))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


def convert_batchnorm(model: nn.Module, device_type: str = "cpu") -> nn.Module:
    """Every BatchNorm layer of ``model`` normalised over the global batch; returns the model.

    ``device_type="cuda"``: torch's ``SyncBatchNorm`` (NCCL); otherwise :class:`GlobalBatchNorm`.
    Parameters and buffers are moved over (same tensors), so call it before building the
    optimiser and before wrapping the model in ``DistributedDataParallel``.
    """
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, GlobalBatchNorm | nn.SyncBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = _convert(child)
        if converted is not child:
            setattr(module, name, converted)
    return module

