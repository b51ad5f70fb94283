"""Data parallelism for the demo's PPO update (``torchrun --nproc-per-node N rlhf-oracle demo``, gloo on CPU).

Every rank builds the same models from the same seeds and computes the same rollouts (the miniature models make
that cheaper than moving them around), so the data and every metric outside the update are identical on all
ranks. The update is data-parallel: each minibatch is split across the ranks by rows, each rank's loss is its
share of the global loss (``torch_impl.global_normaliser`` + ``micro_batch_*``, ``rank_gradients="sum"``), and
the gradients are summed by an all-reduce before clipping and the optimiser step. The result is the
single-process update up to float32 summation order. Only rank 0 writes the run folder; the other ranks keep
their files in ``<out>/.rank<r>`` (resume reads them back).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist

__all__ = [
    "all_sum",
    "broadcast",
    "destroy",
    "init_from_env",
    "rank_and_world",
    "shard",
    "sum_gradients",
]


def init_from_env() -> bool:
    """Join the process group that ``torchrun`` describes (gloo), if launched by it; True if this call joined."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    dist.init_process_group("gloo")
    return True


def destroy() -> None:
    """Leave the process group together: a rank that tears its gloo pairs down while a peer still holds them makes
    that peer abort (SIGABRT), so every rank waits at a barrier first."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast(value: object) -> object:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if rank_and_world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(idx: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous part of the row indices ``idx`` (as even as possible)."""
    rank, world = rank_and_world()
    return torch.tensor_split(idx, world)[rank] if world > 1 else idx


def sum_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """All-reduce (sum) the gradients of ``params`` over the ranks, in one flat buffer."""
    if rank_and_world()[1] == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def all_sum(*values: float | torch.Tensor) -> list[float]:
    """Sums over the ranks of scalars (float64)."""
    t = torch.tensor([float(x) for x in values], dtype=torch.float64)
    if rank_and_world()[1] > 1:
        dist.all_reduce(t)
    return [float(x) for x in t]
