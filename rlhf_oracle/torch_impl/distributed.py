r"""Normalisers for gradient accumulation and data parallelism: every micro-batch on every rank divides by the
counts of the *global* batch, so that the accumulated, rank-averaged gradient is the gradient of the global
objective.

The objective of one optimiser step is an aggregate over the whole batch of ``B`` sequences (see
:func:`rlhf_oracle.reference.aggregate`). Split into ``K`` micro-batches on each of ``W`` ranks, the batch is
seen piece by piece: a loss that divides each piece by its *own* counts (its token count, its number of
sequences, its padded length) weights the pieces unequally and gives a different gradient, the known
gradient-accumulation bug. Because every mode is a sum over tokens divided by a global constant,

.. math::

    \mathcal{L} = \sum_{r=1}^{W}\sum_{k=1}^{K} \ell_{r,k}, \qquad
    \ell_{r,k} = \frac{1}{D}\sum_{(b,t)\in(r,k)} w_{b,t}\, m_{b,t}\, x_{b,t}

with :math:`D = \sum m` (``token-mean``), :math:`D = B` and :math:`w_{b,t} = 1/|o_b|` (``seq-mean-token-mean``;
:math:`|o_b|` is a row's own count, never split), :math:`D = B` (``seq-mean-token-sum``), :math:`D = B L`
(``seq-mean-token-sum-norm``, ``L`` the generation budget or the global padded length). The counts ``D`` come
from :func:`global_normaliser`: summed over this rank's micro-batches and all-reduced over the process group.

DDP and FSDP *average* the ranks' gradients (their all-reduce divides by ``W``); :func:`micro_batch_aggregate`
multiplies by ``W`` to undo it (``rank_gradients="mean"``, the default), or not (``"sum"``) for a trainer that
sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import _validation as v
from .policy import AGGREGATION_MODES, _per_token_objective
from .value import _per_token as _value_per_token

RANK_GRADIENTS = ("mean", "sum")


@dataclass(frozen=True)
class Normaliser:
    """The global counts of one optimiser step's batch (all micro-batches of all ranks)."""

    sequences: int
    """B: the number of sequences (rows), empty rows included."""
    tokens: int
    """The number of valid tokens, :math:`\\sum_{b,t} m_{b,t}`."""
    length: int
    """The largest padded length T over all micro-batches (``seq-mean-token-sum-norm`` without ``max_tokens``)."""
    world_size: int = 1
    """Ranks whose gradients are combined (1 without torch.distributed)."""

    def denominator(self, agg: str, max_tokens: int | None = None) -> int:
        """D of the module docstring for ``agg`` (for ``seq-mean-token-mean`` the 1/|o_b| is per row)."""
        v.choice("Normaliser.denominator", "agg", agg, AGGREGATION_MODES)
        if agg == "token-mean":
            return self.tokens
        if agg == "seq-mean-token-sum-norm":
            return self.sequences * (self.length if max_tokens is None else max_tokens)
        return self.sequences


def _group_size(group: dist.ProcessGroup | None) -> int:
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size(group))
    return 1


def global_normaliser(
    masks: torch.Tensor | Sequence[torch.Tensor], *, group: dist.ProcessGroup | None = None
) -> Normaliser:
    """Counts over this rank's micro-batch masks, all-reduced over ``group`` when torch.distributed is initialised.

    ``masks``: one ``[B_k, T_k]`` boolean mask per micro-batch of this rank (or a single mask). Every rank must
    call this (it is a collective: a sum for the counts, a max for the padded length). Integer counts, exact.
    """
    fn = "global_normaliser"
    items = [masks] if isinstance(masks, torch.Tensor) else list(masks)
    if not items:
        raise ValueError(f"{fn}: 'masks' is empty: give the mask of every micro-batch of this rank")
    rows = tokens = length = 0
    for i, mask in enumerate(items):
        if not isinstance(mask, torch.Tensor) or mask.ndim != 2 or mask.dtype != torch.bool:
            got = (
                f"dtype {mask.dtype}, shape {v.shape_str(mask.shape)}"
                if isinstance(mask, torch.Tensor)
                else type(mask).__name__
            )
            raise ValueError(f"{fn}: 'masks'[{i}] must be a boolean [B, T] tensor, got {got}")
        rows += mask.shape[0]
        tokens += int(mask.sum())
        length = max(length, mask.shape[1])
    world = _group_size(group)
    if world > 1:
        # gloo reduces CPU tensors; NCCL (and the other accelerator backends) the current device's
        device = torch.device("cpu") if dist.get_backend(group) == "gloo" else _accelerator()
        sums = torch.tensor([rows, tokens], dtype=torch.int64, device=device)
        longest = torch.tensor([length], dtype=torch.int64, device=device)
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
        dist.all_reduce(longest, op=dist.ReduceOp.MAX, group=group)
        rows, tokens, length = int(sums[0]), int(sums[1]), int(longest[0])
    return Normaliser(sequences=rows, tokens=tokens, length=length, world_size=world)


def _accelerator() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _share(
    fn: str, x: torch.Tensor, m: torch.Tensor, mode: str, normaliser: Normaliser, max_tokens: int | None,
    rank_gradients: str,
) -> torch.Tensor:  # fmt: skip
    """The share on validated inputs (``x`` finite at valid positions; masked ones are where-ed to 0)."""
    v.choice(fn, "agg", mode, AGGREGATION_MODES)
    v.choice(fn, "rank_gradients", rank_gradients, RANK_GRADIENTS)
    if not isinstance(normaliser, Normaliser):
        got = type(normaliser).__name__
        raise ValueError(f"{fn}: 'normaliser' must be a Normaliser (from global_normaliser), got {got}")
    max_tokens = v.optional_positive_int(fn, "max_tokens", max_tokens)
    denominator = normaliser.denominator(mode, max_tokens)
    if denominator <= 0:
        what = "valid tokens" if mode == "token-mean" else "sequences"
        raise ValueError(f"{fn}: the global batch has no {what} ('normaliser' counts {denominator})")
    acc = v.acc_dtype(x.dtype)
    xm = torch.where(m, x.to(acc), 0.0)
    if mode == "seq-mean-token-mean":
        v.no_empty_rows(fn, m, mode)
        total = (xm.sum(dim=-1) / m.sum(dim=-1).clamp_min(1).to(acc)).sum()
    else:
        total = xm.sum()
    scale = normaliser.world_size if rank_gradients == "mean" else 1
    return total * (scale / denominator)


def micro_batch_aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    agg: str,
    normaliser: Normaliser,
    *,
    max_tokens: int | None = None,
    rank_gradients: str = "mean",
) -> torch.Tensor:
    r"""This micro-batch's share :math:`\ell_{r,k}` of the global aggregate (a 0-dim tensor).

    Summed over the micro-batches of every rank it equals :func:`rlhf_oracle.torch_impl.aggregate` of the global
    batch; call ``.backward()`` on each share (gradient accumulation) and the accumulated gradient is the global
    one. With ``rank_gradients="mean"`` (DDP, FSDP) the share is multiplied by the world size, which the
    gradient all-reduce divides back out.

    Shapes: ``values`` [B_k, T_k], ``mask`` [B_k, T_k] bool -> 0-dim, in the dtype of ``values`` (sums in
    float32 for bf16/fp16).
    """
    fn = "micro_batch_aggregate"
    x = v.as_float(fn, "values", values, ndim=2, shape_doc="[B, T]")
    m = v.as_mask(fn, mask, like=x, like_name="values")
    v.finite(fn, "values", x, m)
    return _share(fn, x, m, agg, normaliser, max_tokens, rank_gradients).to(x.dtype)


def micro_batch_policy_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    normaliser: Normaliser,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    agg: str = "seq-mean-token-mean",
    *,
    max_tokens: int | None = None,
    rank_gradients: str = "mean",
) -> torch.Tensor:
    """This micro-batch's share of :func:`rlhf_oracle.torch_impl.policy_loss` of the global batch.

    ``-micro_batch_aggregate(ppo_clip_objective(...), mask, agg, normaliser)`` with the validation and NaN-safe
    masking of ``policy_loss``: accumulate the backward passes of all micro-batches (and let DDP average the
    ranks) to get the gradient of the global policy loss.
    """
    fn = "micro_batch_policy_loss"
    per_token, m, out_dtype, max_tokens = _per_token_objective(
        fn, logp, logp_old, advantages, mask, clip_eps, clip_eps_high, dual_clip, agg, max_tokens
    )
    return -_share(fn, per_token, m, agg, normaliser, max_tokens, rank_gradients).to(out_dtype)


def micro_batch_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    normaliser: Normaliser,
    clip_eps: float | None = 0.2,
    agg: str = "token-mean",
    *,
    max_tokens: int | None = None,
    rank_gradients: str = "mean",
) -> torch.Tensor:
    """This micro-batch's share of :func:`rlhf_oracle.torch_impl.value_loss` of the global batch."""
    fn = "micro_batch_value_loss"
    per_token, m, out_dtype, max_tokens = _value_per_token(fn, values, old_values, returns, mask, clip_eps, max_tokens)
    return _share(fn, per_token, m, agg, normaliser, max_tokens, rank_gradients).to(out_dtype)
