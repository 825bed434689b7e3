"""Sums of small tensors over the data-parallel ranks, at shared-memory latency on one host.

Global BatchNorm (:mod:`components.models.global_bn`) sums per-channel statistics over the
ranks twice per BN layer and step: 36 collectives per step for the embedded default, each of at
most ``2 x 256 + 1`` floats, so their cost is latency, not bandwidth. Through gloo on loopback one
such all-reduce took ~1.3 ms on an idle 2-core VM (a hop to gloo's worker thread and TCP
wake-ups in both processes), and a 2-worker step 1.5x as long as with local BN
(``bench/bench_scaling_breakdown.py``, docs/benchmarks.md).

:class:`SharedMemorySum` does the same sum through one shared-memory segment when every rank
runs on the same host: each rank copies its tensor into its own slot, publishes a sequence
number, waits for every other rank's (a short spin, then ``sched_yield``), and adds the slots in
rank order in float64. Every rank computes the same additions in the same order, so all ranks get
bit-identical results (for two ranks: exactly the float32 sum gloo returns). Slots are double
buffered by the parity of the sequence number: a rank can only overwrite a buffer two calls
later, after every rank has published the call in between, i.e. finished reading this one.

Ordering relies on x86-64's total store order (the data stores are visible before the sequence
store that follows them), so the segment is only used on x86-64; elsewhere, across hosts, for
GPU tensors or tensors larger than the capacity, :func:`all_reduce_sum` (torch.distributed) is
used. A rank that dies is detected from its pid while the others wait (:class:`PeerGone`), so a
failed worker fails the step instead of hanging it; Ray Train then restarts the group.
"""

from __future__ import annotations

import mmap
import os
import platform
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

SumFn = Callable[[Tensor], Tensor]  # in place: x <- sum of x over ranks; returns x
SHM_DIR = Path("/dev/shm")
CACHE_LINE_INT64 = 8  # one sequence number per 64-byte line: no false sharing between ranks
SPINS_BEFORE_YIELD = 2_000
YIELDS_PER_LIVENESS_CHECK = 20_000


class PeerGone(RuntimeError):
    """A rank stopped taking part in the collective (its process is gone)."""


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum over the ranks of the default process group, in place (torch.distributed)."""
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


class SharedMemorySum:
    """``__call__(x: Tensor) -> x``: x summed in place over the ranks of one host (see module).

    Built collectively by :meth:`for_process_group`; tensors with more than ``capacity`` elements
    or on a GPU go through ``fallback``.
    """

    def __init__(self, path: Path, rank: int, world: int, capacity: int,
                 fallback: SumFn = all_reduce_sum):
        self.rank, self.world, self.capacity, self.fallback = rank, world, capacity, fallback
        header = 2 * world * CACHE_LINE_INT64  # sequence numbers, then pids
        with path.open("r+b") as handle:
            self._map = mmap.mmap(handle.fileno(), segment_bytes(world, capacity))
        ints = np.frombuffer(self._map, dtype=np.int64, count=header)
        self._seq = ints[:world * CACHE_LINE_INT64:CACHE_LINE_INT64]
        self._pid = ints[world * CACHE_LINE_INT64::CACHE_LINE_INT64]
        self._data = torch.frombuffer(self._map, dtype=torch.float64, offset=header * 8,
                                      count=2 * world * capacity).view(2, world, capacity)
        self._calls = 0

    @classmethod
    def for_process_group(cls, capacity: int, fallback: SumFn = all_reduce_sum) -> SumFn:
        """A :class:`SharedMemorySum` when all ranks of the default group share this host and
        its ``/dev/shm`` (x86-64 only), else ``fallback``. Every rank must call it (collective).
        """
        rank, world = dist.get_rank(), dist.get_world_size()
        local = [_host_identity() if platform.machine() in ("x86_64", "AMD64") else None]
        hosts: list = [None] * world
        dist.all_gather_object(hosts, local[0])
        if hosts[0] is None or any(host != hosts[0] for host in hosts):
            return fallback
        name = [str(SHM_DIR / f"simclr-sum-{uuid.uuid4().hex}") if rank == 0 else None]
        dist.broadcast_object_list(name, src=0)
        path = Path(name[0])
        if rank == 0:
            with path.open("wb") as handle:
                handle.truncate(segment_bytes(world, capacity))
        dist.barrier()
        try:
            reducer = cls(path, rank, world, capacity, fallback)
        finally:
            dist.barrier()  # every rank has mapped it: the name is no longer needed
            if rank == 0:
                path.unlink(missing_ok=True)
        reducer._pid[rank] = os.getpid()
        ok = torch.tensor([float(reducer._check_shared())])
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return reducer if ok.item() == 1.0 else fallback

    def __call__(self, x: Tensor) -> Tensor:
        n = x.numel()
        if n > self.capacity or x.device.type != "cpu":
            return self.fallback(x)
        self._calls += 1
        call, buffer = self._calls, self._calls & 1
        self._data[buffer, self.rank, :n].copy_(x.detach().reshape(-1))
        self._seq[self.rank] = call  # publish after the data (x86-64 store order)
        self._wait_for(call)
        total = self._data[buffer, 0, :n].clone()
        for other in range(1, self.world):
            total += self._data[buffer, other, :n]
        x.copy_(total.view_as(x))
        return x

    def _wait_for(self, call: int) -> None:
        seq, spins = self._seq, 0
        while int(seq.min()) < call:
            spins += 1
            if spins > SPINS_BEFORE_YIELD:
                os.sched_yield()  # let a descheduled peer run (oversubscribed machines)
                if spins % YIELDS_PER_LIVENESS_CHECK == 0:
                    self._raise_if_peer_gone(call)

    def _raise_if_peer_gone(self, call: int) -> None:
        for other in range(self.world):
            if int(self._seq[other]) < call and not _alive(int(self._pid[other])):
                raise PeerGone(f"rank {other} (pid {int(self._pid[other])}) is gone; "
                               f"rank {self.rank} stopped waiting for it in call {call}")

    def _check_shared(self) -> bool:
        """Every rank's pid is visible here: the ranks really share this memory."""
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if all(int(pid) > 0 for pid in self._pid):
                return True
            time.sleep(0.001)
        return False


class _GatherBySum(torch.autograd.Function):
    """All-gather as a sum: each rank's rows in a zero tensor of the gathered shape, summed over
    the ranks (exact: x + 0). Backward: the gradients of every rank summed, this rank's rows."""

    @staticmethod
    def forward(ctx, x: Tensor, sum_over_ranks: SumFn, rank: int,  # noqa: ANN001
                world: int) -> Tensor:
        rows = slice(rank * x.shape[0], (rank + 1) * x.shape[0])
        gathered = x.new_zeros((world * x.shape[0], *x.shape[1:]))
        gathered[rows] = x
        ctx.rows, ctx.sum_over_ranks = rows, sum_over_ranks
        return sum_over_ranks(gathered)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        return ctx.sum_over_ranks(grad.contiguous().clone())[ctx.rows], None, None, None


def gather_by_sum(x: Tensor, sum_over_ranks: SumFn) -> Tensor:
    """``x: (n, *)`` of every rank -> ``(world n, *)`` in rank order, differentiable, through
    ``sum_over_ranks`` (a :class:`SharedMemorySum`: the NT-Xent gather without gloo's threads);
    every rank passes the same n. Same values and gradients as torch.distributed's all-gather."""
    return _GatherBySum.apply(x, sum_over_ranks, dist.get_rank(), dist.get_world_size())


def average_gradients(reducer: SumFn, bucket):  # noqa: ANN001, ANN201
    """A DistributedDataParallel communication hook: the bucket's (``dist.GradBucket``) gradients
    averaged over the ranks through ``reducer``, synchronously, as soon as the bucket is ready;
    returns a completed ``torch.futures.Future``. Unannotated: DDP compares the annotations
    with the classes themselves, and this module's are strings (``from __future__``)."""
    grads = bucket.buffer()
    reducer(grads).div_(dist.get_world_size())
    done: torch.futures.Future[Tensor] = torch.futures.Future()
    done.set_result(grads)
    return done


def share_gradients_in_memory(ddp: torch.nn.parallel.DistributedDataParallel) -> bool:
    """Route ``ddp``'s gradient all-reduce through a :class:`SharedMemorySum` when every rank
    shares this host (collective: every rank calls it); True if it did, else DDP keeps gloo.

    For the x0.5 encoder's 0.23 M parameters DDP's gloo all-reduce cost ~18 ms of a ~150 ms
    step on 2 cores (``bench/bench_scaling_breakdown.py``), mostly the hops through gloo's
    threads; through shared memory it is the same float32 sums at memory-copy cost.
    """
    if next(ddp.module.parameters()).device.type != "cpu":
        return False
    reducer = shared_sum(sum(p.numel() for p in ddp.module.parameters()))
    if reducer is None:
        return False
    ddp.register_comm_hook(reducer, average_gradients)
    return True


def shared_sum(capacity: int) -> SharedMemorySum | None:
    """:meth:`SharedMemorySum.for_process_group`, or None where the ranks do not share a host
    (collective: every rank calls it)."""
    reducer = SharedMemorySum.for_process_group(capacity)
    return reducer if isinstance(reducer, SharedMemorySum) else None


def segment_bytes(world: int, capacity: int) -> int:
    """Bytes of the segment: sequence numbers and pids (one cache line each), two buffers of
    ``world x capacity`` float64."""
    return 2 * world * CACHE_LINE_INT64 * 8 + 2 * world * capacity * 8


def _host_identity() -> tuple[str, str] | None:
    """(hostname, boot id) when ``/dev/shm`` is usable here, else None."""
    if not (SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)):
        return None
    boot = Path("/proc/sys/kernel/random/boot_id")
    return socket.gethostname(), boot.read_text().strip() if boot.is_file() else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
