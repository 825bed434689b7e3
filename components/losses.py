"""SimCLR's contrastive losses (Chen et al. 2020): NT-Xent (eq. 1) and the alternatives of Table 2.

For N images there are 2N views ``z = cat(z1, z2)``; the positive of row ``i`` is its twin
``(i + N) mod 2N`` and the other 2N - 2 rows are negatives. Each loss sees the similarities
``s_ik = u_i^T v_k`` of the views, ``u = z / ||z||`` with ``l2_normalize`` (the default, as in the
paper) and ``u = z`` without it (Table 4's ablation):

- ``nt_xent`` (eq. 1): ``-log softmax_k(s_ik / tau)`` at the twin, the softmax over all
  2N - 1 other views; mean over the 2N anchors.
- ``nt_logistic`` (Table 2): ``-log sigmoid(s_i+ / tau) - mean over the 2N - 2 negatives of
  log sigmoid(-s_i- / tau)``; mean over the 2N anchors. The positive term and the negative
  term have equal weight: summed over negatives, the positive would get 1 / (2N - 2) of the
  weight and vanish as the batch grows, and the loss scale (and so the tuned temperature and
  learning rate) would depend on the batch size. Since every anchor has the same number of
  negatives, this is exactly the mean over all 2N positive pairs plus the mean over all
  2N (2N - 2) negative pairs.
- ``margin_triplet`` (Table 2): ``mean over the 2N - 2 negatives of max(s_i- - s_i+ + m, 0)``,
  every negative a triplet (no negative mining); mean over the 2N anchors, i.e. the mean over
  all 2N (2N - 2) triplets. ``temperature`` plays no part.

Table 2 writes the objectives to maximise; these are their negatives, to minimise. With a
global batch of one image (no negatives) the negative terms are 0.

Under ``torch.distributed`` with more than one worker, the embeddings of every worker are
gathered WITH gradients so that the negatives come from the global batch, and the positives are
offset by the worker's rank. ``sum_over_ranks`` routes the gather and the loss value through a
given collective instead (the training loop passes a shared-memory sum when every rank is on one
host: :func:`components.collectives.gather_by_sum`; the same values, bit for bit).

Gradient convention under data parallelism: each worker back-propagates the mean over ITS OWN
anchors, and the gather's backward sums the contributions of every worker. After the
parameter gradients are averaged over workers (what ``DistributedDataParallel`` does) they are
exactly the single-process gradients of the loss over the global batch (every loss above is a
mean over anchors of a per-anchor term). The returned VALUE is the global loss on every worker
(averaged over all 2N global anchors).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from components.collectives import SumFn, all_reduce_sum, gather_by_sum

# Added to the self-similarity logits. Any value far below every logit works (>= -1/tau with l2
# norm; without it >= -|z|^2 / tau, far above unless |z|^2 / tau nears 1e9); a finite one keeps
# the softmax free of inf - inf even if a row were fully masked.
SELF_MASK_LOGIT = -1.0e9


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _gather(x: Tensor, sum_over_ranks: SumFn | None) -> Tensor:
    """(n, D) on every rank -> (world * n, D) in rank order, differentiable: through
    ``sum_over_ranks`` when given (:func:`components.collectives.gather_by_sum`), else
    torch.distributed's all-gather."""
    if sum_over_ranks is not None:
        return gather_by_sum(x, sum_over_ranks)
    from torch.distributed.nn.functional import all_gather

    # torch 2.14 marks this gather deprecated in favour of a private (underscore) module; it is
    # still the public all-gather with a backward pass, so keep it and keep the log readable.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        return torch.cat(all_gather(x), dim=0)


class _Pairs(NamedTuple):
    """This worker's anchors against the global batch (n local images, N global)."""

    sims: Tensor  # (2n, 2N) float32: s_ik = u_i^T v_k, anchors = this worker's rows of the 2N
    positives: Tensor  # (2n,) global index of its twin
    self_mask: Tensor  # (2n, 2N) bool: True at (i, rows[i])
    n: int
    big_n: int
    world: int
    sum_over_ranks: SumFn  # the collective of the loss value and the hit count


def _pairs(z1: Tensor, z2: Tensor, l2_normalize: bool, sum_over_ranks: SumFn | None) -> _Pairs:
    """Similarities of this worker's 2n views with the 2N views of the global batch.

    z1, z2: (n, D). Must run with autocast disabled (float32 throughout). ``sum_over_ranks``:
    the collective to gather through (None: torch.distributed).
    """
    world, rank = _world()
    n = z1.shape[0]
    if l2_normalize:
        q1 = F.normalize(z1.float(), dim=1)
        q2 = F.normalize(z2.float(), dim=1)
    else:
        q1, q2 = z1.float(), z2.float()
    if world > 1:  # both views in one gather: (n, 2D) -> (N, 2D)
        k1, k2 = _gather(torch.cat([q1, q2], dim=1), sum_over_ranks).split(q1.shape[1], dim=1)
    else:
        k1, k2 = q1, q2
    big_n = k1.shape[0]  # global N, built from actual shapes (a partial last batch is fine)
    keys = torch.cat([k1, k2], dim=0)  # (2N, D)
    anchors = torch.cat([q1, q2], dim=0)  # (2n, D): this worker's rows of the global 2N
    sims = anchors @ keys.T  # (2n, 2N)

    local = torch.arange(n, device=z1.device) + rank * n  # global index of each local image
    rows = torch.cat([local, local + big_n])  # global index of each anchor
    positives = torch.cat([local + big_n, local])  # its twin
    self_mask = F.one_hot(rows, 2 * big_n).bool()
    return _Pairs(sims, positives, self_mask, n, big_n, world, sum_over_ranks or all_reduce_sum)


def _global_value(loss: Tensor, correct: Tensor, pairs: _Pairs) -> tuple[Tensor, Tensor]:
    """``(loss, acc)`` from the mean over the 2n local anchors and the local count of hits.

    The returned loss has the value of the global mean over 2N anchors and the gradient of the
    local mean (see the module docstring); acc = hits / 2N over the global batch.
    """
    n, big_n = pairs.n, pairs.big_n
    with torch.no_grad():
        if pairs.world > 1:
            stats = torch.stack([loss.detach() * (2 * n), correct])
            pairs.sum_over_ranks(stats)
            global_loss, correct = stats[0] / (2 * big_n), stats[1]
        else:
            global_loss = loss.detach()
        acc = correct / (2 * big_n)
    # Value: the global loss; gradient: the local mean (see the module docstring).
    loss = loss + (global_loss - loss.detach())
    return loss, acc


def _check(z1: Tensor, z2: Tensor, name: str, value: float) -> None:
    """Shapes (both (n, D)) and the hyper-parameter ``name`` (> 0)."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (n, D), got {tuple(z1.shape)}, {tuple(z2.shape)}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def nt_xent_with_accuracy(
    z1: Tensor, z2: Tensor, temperature: float, *, l2_normalize: bool = True,
    sum_over_ranks: SumFn | None = None,
) -> tuple[Tensor, Tensor]:
    """NT-Xent loss and contrastive top-1 accuracy.

    z1, z2: (n, D) projections of the two views of this worker's n images (any float dtype).
    Returns ``(loss, acc)``: float32 scalars, both over the GLOBAL batch of 2N = 2 n world
    anchors. ``acc`` is the fraction of anchors whose most similar other view is the twin
    (no gradient). Every worker must pass the same n. ``l2_normalize=False``: dot products of
    the raw projections instead of cosine similarities (paper Table 4).
    """
    _check(z1, z2, "temperature", temperature)
    # float32 whatever autocast does: the logits reach 1/tau and the softmax needs the range.
    with torch.autocast(device_type=z1.device.type, enabled=False):
        pairs = _pairs(z1, z2, l2_normalize, sum_over_ranks)
        logits = pairs.sims / temperature  # (2n, 2N)
        logits = logits.masked_fill(pairs.self_mask, SELF_MASK_LOGIT)
        loss = F.cross_entropy(logits, pairs.positives)  # mean over the 2n local anchors
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == pairs.positives).float().sum()
        return _global_value(loss, correct, pairs)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent loss (float32 scalar) of the projections z1, z2: (n, D); see nt_xent_with_accuracy."""
    return nt_xent_with_accuracy(z1, z2, temperature)[0]


def _hits(pairs: _Pairs) -> Tensor:
    """How many local anchors have their twin as the most similar other view (float32 count)."""
    with torch.no_grad():
        others = pairs.sims.masked_fill(pairs.self_mask, float("-inf"))
        return (others.argmax(dim=1) == pairs.positives).float().sum()


def _positive_and_negatives(pairs: _Pairs) -> tuple[Tensor, Tensor]:
    """``(s_pos (2n,), negative mask (2n, 2N) bool)``: every view but the anchor and its twin."""
    s_pos = pairs.sims.gather(1, pairs.positives[:, None]).squeeze(1)
    twin = F.one_hot(pairs.positives, 2 * pairs.big_n).bool()
    return s_pos, ~(pairs.self_mask | twin)


def _mean_over_negatives(terms: Tensor, negatives: Tensor) -> Tensor:
    """(2n, 2N) per-pair terms -> (2n,) mean over each anchor's 2N - 2 negatives (0 if none)."""
    count = max(negatives.shape[1] - 2, 1)
    return torch.where(negatives, terms, torch.zeros_like(terms)).sum(dim=1) / count


def nt_logistic_with_accuracy(
    z1: Tensor, z2: Tensor, temperature: float, *, l2_normalize: bool = True,
    sum_over_ranks: SumFn | None = None,
) -> tuple[Tensor, Tensor]:
    """NT-Logistic loss (paper Table 2) and contrastive top-1 accuracy.

    Per anchor i: ``-log sigmoid(s_i+ / tau) - mean_{k negative} log sigmoid(-s_ik / tau)``,
    averaged over the 2N anchors (module docstring: why the negatives are averaged).
    z1, z2: (n, D) on this worker; returns ``(loss, acc)`` as :func:`nt_xent_with_accuracy`.
    """
    _check(z1, z2, "temperature", temperature)
    with torch.autocast(device_type=z1.device.type, enabled=False):
        pairs = _pairs(z1, z2, l2_normalize, sum_over_ranks)
        s_pos, negatives = _positive_and_negatives(pairs)
        positive_term = -F.logsigmoid(s_pos / temperature)  # (2n,)
        negative_term = _mean_over_negatives(-F.logsigmoid(-pairs.sims / temperature), negatives)
        loss = (positive_term + negative_term).mean()  # mean over the 2n local anchors
        return _global_value(loss, _hits(pairs), pairs)


def margin_triplet_with_accuracy(
    z1: Tensor, z2: Tensor, margin: float, *, l2_normalize: bool = True,
    sum_over_ranks: SumFn | None = None,
) -> tuple[Tensor, Tensor]:
    """Margin triplet loss (paper Table 2) over every negative, and contrastive top-1 accuracy.

    Per anchor i: ``mean_{k negative} max(s_ik - s_i+ + margin, 0)``, averaged over the 2N
    anchors. z1, z2: (n, D) on this worker; returns ``(loss, acc)`` as
    :func:`nt_xent_with_accuracy`. ``margin`` must be > 0 (with 0, collapsed embeddings are
    a minimum).
    """
    _check(z1, z2, "margin", margin)
    with torch.autocast(device_type=z1.device.type, enabled=False):
        pairs = _pairs(z1, z2, l2_normalize, sum_over_ranks)
        s_pos, negatives = _positive_and_negatives(pairs)
        hinge = F.relu(pairs.sims - s_pos[:, None] + margin)  # (2n, 2N)
        loss = _mean_over_negatives(hinge, negatives).mean()  # mean over the 2n local anchors
        return _global_value(loss, _hits(pairs), pairs)


LossFn = Callable[..., tuple[Tensor, Tensor]]
# name -> (function, the name of the hyper-parameter it takes: temperature or margin)
LOSSES: dict[str, tuple[LossFn, str]] = {
    "nt_xent": (nt_xent_with_accuracy, "temperature"),
    "nt_logistic": (nt_logistic_with_accuracy, "temperature"),
    "margin_triplet": (margin_triplet_with_accuracy, "margin"),
}


def contrastive_loss_with_accuracy(
    z1: Tensor,
    z2: Tensor,
    name: str = "nt_xent",
    *,
    temperature: float,
    l2_normalize: bool = True,
    margin: float = 1.0,
    sum_over_ranks: SumFn | None = None,
) -> tuple[Tensor, Tensor]:
    """The contrastive loss ``name`` (a key of :data:`LOSSES`) and its contrastive accuracy.

    z1, z2: (n, D) projections of this worker's n images. ``temperature`` is used by nt_xent
    and nt_logistic, ``margin`` by margin_triplet. Returns ``(loss, acc)``: float32 scalars over
    the global batch (module docstring). ``nt_xent`` with ``l2_normalize=True`` is exactly
    :func:`nt_xent_with_accuracy`. ``sum_over_ranks``: the collective for the gather and the
    global value (a :class:`components.collectives.SharedMemorySum`; None: torch.distributed).
    """
    if name not in LOSSES:
        raise ValueError(f"unknown contrastive loss {name!r}; expected one of {sorted(LOSSES)}")
    fn, knob = LOSSES[name]
    value = temperature if knob == "temperature" else margin
    return fn(z1, z2, value, l2_normalize=l2_normalize, sum_over_ranks=sum_over_ranks)
