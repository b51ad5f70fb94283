"""Critic-free advantages, vectorised: RLOO, REINFORCE++ (and its group baseline) and ReMax.

Groups are a ``view(n_groups, group_size)`` of the rows (no loop over groups); the return-to-go over the valid
tokens of a row compacts the valid positions to the left (a stable argsort of the inverted mask, holes skipped)
and runs the blockwise discounted reverse cumulative sum of :func:`rlhf_oracle.torch_impl.gae` (no loop over
tokens). bf16/fp16 inputs are computed in float32 and rounded once. See :mod:`rlhf_oracle.reference.critic_free`
for the definitions and every convention.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _validation as v
from .advantages import GAE_CHUNK, _compaction, _discounted_reverse_cumsum, whiten

__all__ = [
    "KL_POSITIONS",
    "SINGLETON_RULES",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "remax_advantages",
    "rloo_advantages",
]

SINGLETON_RULES = ("error", "zero", "score")
KL_POSITIONS = ("after", "before")


def _row_mask(fn: str, mask: Any, n_rows: int) -> torch.Tensor:
    m = v.as_mask(fn, mask)
    if m.shape[0] != n_rows:
        raise ValueError(f"{fn}: 'mask' has shape {v.shape_str(m.shape)}, expected ({n_rows}, T) to match 'scores'")
    return m


def _returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma G_next over the valid tokens of each row (holes skipped), 0 at masked positions, in the
    dtype of ``rewards`` (already the accumulation dtype)."""
    batch, length = rewards.shape
    if batch == 0 or length == 0:
        return torch.zeros_like(rewards)
    r0 = torch.where(mask, rewards, 0.0)
    order, slot = _compaction(mask)
    compact = _discounted_reverse_cumsum(r0.gather(1, order), gamma, GAE_CHUNK)
    return torch.where(mask, compact.gather(1, slot), 0.0)


def _whitened(fn: str, x: torch.Tensor, m: torch.Tensor, unbiased: bool, eps: float) -> torch.Tensor:
    try:
        return whiten(x, m, unbiased=unbiased, eps=eps)
    except ValueError as err:
        raise ValueError(str(err).replace("whiten:", f"{fn}:", 1)) from None


def rloo_advantages(
    scores: torch.Tensor, group_size: int, *, singleton: str = "error", mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""RLOO advantages :math:`s_i - \frac{1}{n-1}\sum_{j \ne i} s_j = \frac{n}{n-1}(s_i - \bar s_g)` per group.

    Groups are consecutive blocks of ``group_size`` rows; ``singleton`` ("error", "zero", "score") is what a group
    of one gets. Ahmadian et al. 2024, eq. 9; see :func:`rlhf_oracle.reference.rloo_advantages`.

    Shapes: ``scores`` [B] -> [B], or [B, T] with ``mask``.
    """
    fn = "rloo_advantages"
    singleton = v.choice(fn, "singleton", singleton, SINGLETON_RULES)
    s = v.as_float(fn, "scores", scores, ndim=1, shape_doc="[B]")
    n = v.group_size(fn, group_size, s.shape[0], 1)
    v.finite(fn, "scores", s)
    if n == 1 and singleton == "error" and s.shape[0] > 0:
        raise ValueError(
            f"{fn}: 'group_size' is 1: a leave-one-out baseline needs 2 samples per group; pass singleton='zero' "
            "(TRL, verl rloo_vectorized) or singleton='score' (verl rloo)"
        )
    acc = v.acc_dtype(s.dtype)
    groups = s.to(acc).view(-1, n)
    if n == 1:
        adv = groups if singleton == "score" else torch.zeros_like(groups)
    else:
        adv = (groups - groups.mean(dim=-1, keepdim=True)) * (n / (n - 1))
    flat = adv.reshape(-1)
    if mask is None:
        return flat.to(s.dtype)
    m = _row_mask(fn, mask, s.shape[0])
    return torch.where(m, flat[:, None], 0.0).to(s.dtype)


def reinforce_pp_advantages(
    rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, unbiased: bool = True, *, eps: float = 1e-8
) -> torch.Tensor:
    r"""REINFORCE++ advantages: the return-to-go :math:`G_t = \sum_{t' \ge t} \gamma^{t'-t} r_{t'}` over the valid
    tokens (holes skipped), whitened over the batch's valid tokens (Bessel if ``unbiased``, eps inside the sqrt).

    Hu 2025 (arXiv 2501.03262); see :func:`rlhf_oracle.reference.reinforce_pp_advantages`.

    Shapes: ``rewards``, ``mask`` [B, T] -> [B, T], 0 at masked positions.
    """
    fn = "reinforce_pp_advantages"
    r = v.as_float(fn, "rewards", rewards, ndim=2, shape_doc="[B, T]")
    m = v.as_mask(fn, mask, like=r, like_name="rewards")
    g = v.unit_interval(fn, "gamma", gamma)
    unbiased = v.flag(fn, "unbiased", unbiased)
    e = v.non_negative(fn, "eps", eps)
    v.finite(fn, "rewards", r, m)
    returns = _returns_to_go(r.to(v.acc_dtype(r.dtype)), m, g)
    return _whitened(fn, returns, m, unbiased, e).to(r.dtype)


def reinforce_pp_baseline_advantages(
    scores: torch.Tensor,
    group_size: int,
    mask: torch.Tensor,
    unbiased: bool = True,
    *,
    eps: float = 1e-8,
    kl_rewards: torch.Tensor | None = None,
    kl_position: str = "after",
) -> torch.Tensor:
    r"""REINFORCE++-baseline: :math:`s_i - \bar s_g` broadcast over the valid tokens (plus the return-to-go of
    ``kl_rewards`` after the baseline, or their sum in the score before it), whitened over the batch.

    Hu 2025 (arXiv 2501.03262); see :func:`rlhf_oracle.reference.reinforce_pp_baseline_advantages`.

    Shapes: ``scores`` [B], ``mask`` [B, T], ``kl_rewards`` [B, T] or None -> [B, T], 0 at masked positions.
    """
    fn = "reinforce_pp_baseline_advantages"
    unbiased = v.flag(fn, "unbiased", unbiased)
    kl_position = v.choice(fn, "kl_position", kl_position, KL_POSITIONS)
    s = v.as_float(fn, "scores", scores, ndim=1, shape_doc="[B]")
    n = v.group_size(fn, group_size, s.shape[0], 1)
    e = v.non_negative(fn, "eps", eps)
    v.finite(fn, "scores", s)
    m = _row_mask(fn, mask, s.shape[0])
    acc = v.acc_dtype(s.dtype)
    k = None
    if kl_rewards is not None:
        k = v.as_float(fn, "kl_rewards", kl_rewards, ndim=2, shape_doc="[B, T]")
        v.same_shape(fn, "kl_rewards", k, "mask", m)
        v.finite(fn, "kl_rewards", k, m)
        k = torch.where(m, k.to(acc), 0.0)

    s_acc = s.to(acc)
    if k is not None and kl_position == "before":
        s_acc = s_acc + k.sum(dim=-1)
    groups = s_acc.view(-1, n)
    centred = (groups - groups.mean(dim=-1, keepdim=True)).reshape(-1)
    x = torch.where(m, centred[:, None], 0.0)
    if k is not None and kl_position == "after":
        x = x + _returns_to_go(k, m, 1.0)
    return _whitened(fn, x, m, unbiased, e).to(s.dtype)


def remax_advantages(rewards: torch.Tensor, mask: torch.Tensor, baseline_scores: torch.Tensor) -> torch.Tensor:
    r"""ReMax advantages: the return-to-go of the token rewards (valid tokens, no discount) minus the greedy
    response's score :math:`b_i` at every valid token. Li et al. 2023 (arXiv 2310.10505), Algorithm 1; see
    :func:`rlhf_oracle.reference.remax_advantages`.

    Shapes: ``rewards``, ``mask`` [B, T], ``baseline_scores`` [B] -> [B, T], 0 at masked positions.
    """
    fn = "remax_advantages"
    r = v.as_float(fn, "rewards", rewards, ndim=2, shape_doc="[B, T]")
    m = v.as_mask(fn, mask, like=r, like_name="rewards")
    b = v.as_float(fn, "baseline_scores", baseline_scores, ndim=1, shape_doc="[B]")
    if b.shape[0] != r.shape[0]:
        raise ValueError(f"{fn}: 'baseline_scores' has shape {v.shape_str(b.shape)}, expected ({r.shape[0]},) to "
                         "match 'rewards'")  # fmt: skip
    v.finite(fn, "rewards", r, m)
    v.finite(fn, "baseline_scores", b)
    out_dtype = torch.promote_types(r.dtype, b.dtype)
    acc = v.acc_dtype(out_dtype)
    returns = _returns_to_go(r.to(acc), m, 1.0)
    return torch.where(m, returns - b.to(acc)[:, None], 0.0).to(out_dtype)
