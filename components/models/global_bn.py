"""Global BatchNorm across data-parallel workers (SimCLR section 2.2, "Global BN").

With data parallelism every worker sees B/world images; a plain BatchNorm normalises with its
own worker's statistics, which differ from the global batch's and let the contrastive task
leak information through the local statistics. :class:`GlobalBatchNorm` normalises with the
mean and biased variance of the WHOLE global batch, on any backend (gloo on CPU included,
where ``torch.nn.SyncBatchNorm`` refuses CPU tensors):

- forward: ONE all-reduce per layer of the per-channel sums, sums of squares and count;
  backward: ONE all-reduce of ``sum(dy)`` and ``sum(dy * xhat)`` (through shared memory when
  every rank is on one host: :mod:`components.collectives`), so
  input gradients are those of the global batch (same convention as the gathered NT-Xent:
  DDP averages the parameter gradients). The heavy passes are native kernels in the
  activations' dtype and memory format (bf16 under autocast, channels-last): a mean/variance
  pass, ``batch_norm``, ``native_batch_norm_backward``. A 256-image bf16 step of the x0.5
  encoder costs 146-148 CPU ms with it against 127-146 with ``nn.BatchNorm2d``, where float32
  copies and composed elementwise passes cost 176 (docs/benchmarks.md, 2026-12-08);
- running_mean / running_var are updated exactly as ``nn.BatchNorm`` does in train mode with
  the global batch (unbiased variance, ``momentum`` or the cumulative average);
- in eval mode, or without an initialised process group of more than one worker, it is plain
  BatchNorm (no communication, so one rank alone may run it, e.g. the kNN monitor).

:func:`convert_batchnorm` swaps every BatchNorm1d/2d/3d of a model for the global version
(``nn.SyncBatchNorm.convert_sync_batchnorm`` on GPU), keeping parameters and buffers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from components.collectives import SumFn, all_reduce_sum


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _GlobalBatchNormFunction(torch.autograd.Function):
    """Train-mode BatchNorm over all ranks' samples, on native kernels in the input's dtype.

    Forward: this rank's per-channel sums of x and x^2 (:func:`_channel_sums`, float64), ONE
    all-reduce of them and the count, then the normalisation by the global statistics
    (``F.batch_norm`` in eval form: one native pass, bf16 in and out under autocast, fp32 math).
    Backward: the local ``sum(dy)`` and ``sum(dy * xhat)`` (one native BN-backward pass), ONE
    all-reduce of both, then ``dx = scale * dy + (-scale mean(dy xhat) xhat - scale mean(dy))``:
    the bracket is again ``F.batch_norm`` of x (one pass), the sum one ``addcmul_`` (fp32 math,
    one rounding to the input's dtype). The weight and bias gradients stay local sums:
    DistributedDataParallel averages them like every other parameter gradient.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None,  # noqa: ANN001
                eps: float, sum_over_ranks: SumFn) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        channels = x.shape[1]
        count = torch.full((1,), float(x.numel() // channels), dtype=torch.float64,
                           device=x.device)
        stats = sum_over_ranks(torch.cat([_channel_sums(x), count]))
        # E[x^2] - E[x]^2 in float64: the subtraction amplifies the sums' relative error by
        # E[x^2] / var, so the sums must not be rounded to float32 first
        total = stats[-1:]
        mean = stats[:channels] / total
        var = (stats[channels:2 * channels] / total - mean.square()).clamp_min(0.0)
        mean, var, total = mean.float(), var.float(), total[0].float()
        y = F.batch_norm(x, mean, var, weight, bias, training=False, eps=eps)
        ctx.save_for_backward(x, weight, mean, var, total)
        ctx.eps, ctx.sum_over_ranks = eps, sum_over_ranks
        ctx.mark_non_differentiable(mean, var, total)
        return y, mean, var, total

    @staticmethod
    def backward(ctx, dy: Tensor, *_: Tensor):  # noqa: ANN001, ANN205
        x, weight, mean, var, total = ctx.saved_tensors
        dy = dy.contiguous(memory_format=_memory_format(x))
        channels = x.shape[1]
        ones = torch.ones(channels, device=x.device)
        invstd = torch.rsqrt(var + ctx.eps)
        # local sum(dy * xhat) and sum(dy), xhat normalised by the GLOBAL mean and invstd
        _, dw_local, db_local = torch.ops.aten.native_batch_norm_backward(
            dy, x, ones, None, None, mean, invstd, True, 0.0, [False, True, True])
        sums = ctx.sum_over_ranks(torch.cat([db_local, dw_local]))
        mean_dy, mean_dy_xhat = sums[:channels] / total, sums[channels:] / total
        scale = invstd * (weight.float() if weight is not None else ones)
        # dx = scale (dy - mean(dy) - xhat mean(dy xhat)), xhat = (x - mean) invstd
        dx = F.batch_norm(x, mean, var, -scale * mean_dy_xhat, -scale * mean_dy,
                          training=False, eps=ctx.eps)
        # scale in dy's dtype: a mixed bf16/fp32 addcmul_ takes a slow path (~20x on CPU); for
        # bf16 that rounds scale by at most 2^-9 relative, the precision dx is stored in anyway
        dx.addcmul_(dy, scale.to(dy.dtype).view((1, channels) + (1,) * (x.dim() - 2)))
        dw = dw_local.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        db = db_local.to(weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None


def _channel_sums(x: Tensor) -> Tensor:
    """This rank's per-channel sums of x and of x^2 for ``x: (N, C, *)``, as float64 (2C,).

    Channels innermost (channels-last, or (N, C)): one native mean/variance pass in float32
    (``batch_norm_update_stats``, which keeps bf16 statistics for bf16 input, hence the cast).
    Contiguous NCHW: the contiguous inner dims first, several times faster on CPU than one
    reduction over (0, 2, 3), ``torch.var_mean`` or that native pass, which take strided paths.
    """
    xf = x.float()
    rows = xf.numel() // xf.shape[1]
    if xf.dim() == 2 or _memory_format(xf) is torch.channels_last:
        mean, var = (t.double() for t in
                     torch.ops.aten.batch_norm_update_stats(xf, None, None, 0.0))
        return torch.cat([mean * rows, (var + mean.square()) * rows])
    if xf.dim() > 2 and xf.is_contiguous():
        flat = xf.flatten(2)
        sums = flat.sum(2).sum(0), torch.linalg.vector_norm(flat, dim=2).square().sum(0)
    else:
        dims = [0, *range(2, xf.dim())]
        sums = xf.sum(dims), (xf * xf).sum(dims)
    return torch.cat(sums).double()


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """``forward(x: (N, C, *)) -> (N, C, *)``; BatchNorm over the global batch in train mode.

    ``sum_over_ranks`` is the collective its statistics go through (default torch.distributed;
    :func:`convert_batchnorm` passes a shared-memory one when all ranks share a host).
    """

    sum_over_ranks: SumFn = staticmethod(all_reduce_sum)

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
        y, mean, var, total = _GlobalBatchNormFunction.apply(x, self.weight, self.bias, self.eps,
                                                             self.sum_over_ranks)
        if self.training and self.track_running_stats:
            self._update_running_stats(mean, var, float(total))
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, total: float) -> None:
        # momentum None: the cumulative moving average, as nn.BatchNorm
        factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                  else self.momentum)
        unbiased = var * (total / max(total - 1.0, 1.0))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


def convert_batchnorm(model: nn.Module, device_type: str = "cpu",
                      sum_over_ranks: SumFn | None = None) -> nn.Module:
    """Every BatchNorm layer of ``model`` normalised over the global batch; returns the model.

    ``device_type="cuda"``: torch's ``SyncBatchNorm`` (NCCL); otherwise :class:`GlobalBatchNorm`
    whose statistics go through ``sum_over_ranks`` (default: torch.distributed's all-reduce).
    Parameters and buffers are moved over (same tensors), so call it before building the
    optimiser and before wrapping the model in ``DistributedDataParallel``.
    """
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = _convert(model)
    if sum_over_ranks is not None:
        for layer in model.modules():
            if isinstance(layer, GlobalBatchNorm):
                layer.sum_over_ranks = sum_over_ranks
    return model


def max_channels(model: nn.Module) -> int:
    """The widest BatchNorm layer of ``model`` (0 without any): sizes the statistics' buffers."""
    return max((m.num_features for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)), default=0)


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

