"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020, eq. 1).

For N images there are 2N views ``z = cat(z1, z2)``; the positive of row ``i`` is its twin
``(i + N) mod 2N`` and the other 2N - 2 rows are negatives. Under ``torch.distributed`` with
more than one worker, the embeddings of every worker are gathered WITH gradients so that the
negatives come from the global batch, and the positives are offset by the worker's rank.

Gradient convention under data parallelism: each worker back-propagates the mean over ITS OWN
anchors, and the gather's backward sums the contributions of every worker. After the
parameter gradients are averaged over workers (what ``DistributedDataParallel`` does) they are
exactly the single-process gradients of the loss over the global batch. The returned VALUE is
the global loss on every worker (averaged over all 2N global anchors).
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

# Added to the self-similarity logits. Any value far below -1/tau works; a finite one keeps
# the softmax free of inf - inf even if a row were fully masked.
SELF_MASK_LOGIT = -1.0e9


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _gather(x: Tensor) -> Tensor:
    """(n, D) on every rank -> (world * n, D) in rank order, differentiable."""
    from torch.distributed.nn.functional import all_gather

    # torch 2.14 marks this gather deprecated in favour of a private (underscore) module; it is
    # still the public all-gather with a backward pass, so keep it and keep the log readable.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        return torch.cat(all_gather(x), dim=0)


def nt_xent_with_accuracy(z1: Tensor, z2: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
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
            k1, k2 = _gather(q1), _gather(q2)
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


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent loss (float32 scalar) of the projections z1, z2: (n, D); see nt_xent_with_accuracy."""
    return nt_xent_with_accuracy(z1, z2, temperature)[0]
