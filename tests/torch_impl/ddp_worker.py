"""One rank of the data-parallel test, started by ``torchrun`` (gloo, loopback) from test_distributed.py.

A tiny float64 policy (``nn.Linear`` from features to a vocabulary, log-probs through ``torch_impl.token_logprobs``)
wrapped in DDP. The global batch is fixed by a seed and identical on every rank; each rank takes its contiguous
rows, splits them into K micro-batches trimmed to their own longest row (dynamic padding), and accumulates the
backward passes of the micro-batch losses (``no_sync`` until the last one, as trainers do). Rank 0 writes the
averaged gradient of every (aggregation mode, K, normaliser) to a ``.pt`` file.

Normalisers: ``global`` (``torch_impl.micro_batch_policy_loss`` with ``global_normaliser``), ``naive`` (each
micro-batch's own ``policy_loss`` divided by K: the per-micro-batch mean of the known gradient-accumulation bug).
"""

from __future__ import annotations

import sys
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from rlhf_oracle import torch_impl as ti

MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
B, T, F, V = 8, 7, 5, 11


def global_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    lengths = torch.tensor([7, 1, 4, 6, 2, 7, 3, 5])  # unequal rows: unequal micro-batch token counts
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return {
        "features": torch.randn(B, T, F, generator=g, dtype=torch.float64),
        "tokens": torch.randint(0, V, (B, T), generator=g),
        "logp_old_noise": 0.1 * torch.randn(B, T, generator=g, dtype=torch.float64),
        "advantages": torch.randn(B, T, generator=g, dtype=torch.float64),
        "mask": mask,
    }


def make_model() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(F, V, dtype=torch.float64)


def micro_batch_tensors(
    model: torch.nn.Module, data: dict[str, torch.Tensor], rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logp, logp_old, advantages, mask) of the micro-batch ``rows``, trimmed to its longest row."""
    mask = data["mask"][rows]
    length = int(mask.any(0).nonzero().max()) + 1
    mask = mask[:, :length]
    logits = model(data["features"][rows, :length])
    logp = ti.token_logprobs(logits, data["tokens"][rows, :length])
    logp_old = logp.detach() + data["logp_old_noise"][rows, :length]
    return logp, logp_old, data["advantages"][rows, :length], mask


def rank_gradients(mode: str, micro: int, normaliser: str) -> torch.Tensor:
    rank, world = dist.get_rank(), dist.get_world_size()
    data = global_batch()
    model = DistributedDataParallel(make_model())
    rows = np.array_split(np.arange(B), world)[rank]
    pieces = [torch.as_tensor(p) for p in np.array_split(rows, micro)]
    masks = []
    for p in pieces:
        m = data["mask"][p]
        masks.append(m[:, : int(m.any(0).nonzero().max()) + 1])
    counts = ti.global_normaliser(masks)  # all-reduced over the ranks
    for k, p in enumerate(pieces):
        # DDP all-reduces (averages) the gradients at the last micro-batch only, as trainers do
        with model.no_sync() if k < micro - 1 else nullcontext():
            logp, logp_old, adv, mask = micro_batch_tensors(model, data, p)
            if normaliser == "global":
                loss = ti.micro_batch_policy_loss(logp, logp_old, adv, mask, counts, agg=mode)
            else:
                loss = ti.policy_loss(logp, logp_old, adv, mask, agg=mode) / micro
            loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.module.parameters() if p.grad is not None])


def main() -> None:
    out = sys.argv[1]
    dist.init_process_group("gloo")
    results = {}
    for mode in MODES:
        for micro in (m for m in (1, 2, 4) if B // dist.get_world_size() >= m):
            for normaliser in ("global", "naive"):
                results[(mode, micro, normaliser)] = rank_gradients(mode, micro, normaliser)
    if dist.get_rank() == 0:
        torch.save({"world": dist.get_world_size(), "results": results}, out)
    dist.barrier()  # leave together: a rank that closes its gloo pairs while a peer still holds them aborts it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
