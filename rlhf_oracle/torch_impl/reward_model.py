"""Reward-model losses: the pairwise Bradley-Terry loss and its K-ranked form, with a stable log-sigmoid."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import _validation as v


def reward_model_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: float | torch.Tensor | None = None
) -> torch.Tensor:
    r"""Pairwise loss :math:`-\frac1B\sum_b \log\sigma(r_{w,b} - r_{l,b} - m_b)` (``F.logsigmoid``, stable).

    ``margin``: None (0), a Python number, or a floating tensor that is 0-dim or [B]. InstructGPT eq. 1;
    margin as Llama 2 eq. 2. See :func:`rlhf_oracle.reference.reward_model_loss`. Returns 0-dim.
    """
    fn = "reward_model_loss"
    c = v.as_float(fn, "chosen", chosen, ndim=1, shape_doc="[B]")
    r = v.as_float(fn, "rejected", rejected)
    v.same_shape(fn, "rejected", r, "chosen", c)
    if c.shape[0] == 0:
        raise ValueError(f"{fn}: 'chosen' must have shape [B] with B >= 1, got (0,)")
    out_dtype = torch.promote_types(c.dtype, r.dtype)
    if margin is None:
        m = None
    elif isinstance(margin, int | float) and not isinstance(margin, bool):
        m = torch.full_like(c, float(margin), dtype=v.acc_dtype(out_dtype))
    else:
        m = v.as_float(fn, "margin", margin)
        if m.ndim == 0:
            m = m.expand(c.shape)
        v.same_shape(fn, "margin", m, "chosen", c)
        out_dtype = torch.promote_types(out_dtype, m.dtype)
    v.finite(fn, "chosen", c)
    v.finite(fn, "rejected", r)
    if m is not None:
        v.finite(fn, "margin", m)
    acc = v.acc_dtype(out_dtype)
    diff = c.to(acc) - r.to(acc)
    if m is not None:
        diff = diff - m.to(acc)
    return (-F.logsigmoid(diff).mean()).to(out_dtype)


def ranking_loss(rewards: torch.Tensor) -> torch.Tensor:
    r"""K-ranked loss :math:`-\frac1B\sum_b \binom{K}{2}^{-1}\sum_{i<j}\log\sigma(r_{b,i} - r_{b,j})`, rows best first.

    All C(K,2) pairs at once via ``torch.triu_indices``; the normaliser is the paper's C(K,2), not the seed's
    K/2 (they agree only at K = 2). InstructGPT eq. 1; see :func:`rlhf_oracle.reference.ranking_loss`.
    Shapes: ``rewards`` [B, K], K >= 2 -> 0-dim.
    """
    fn = "ranking_loss"
    r = v.as_float(fn, "rewards", rewards, ndim=2, shape_doc="[B, K]")
    batch, k = r.shape
    if k < 2:
        raise ValueError(f"{fn}: 'rewards' must have K >= 2 ranked answers per row, got K={k}")
    if batch == 0:
        raise ValueError(f"{fn}: 'rewards' must have shape [B, K] with B >= 1, got {v.shape_str(r.shape)}")
    v.finite(fn, "rewards", r)
    acc = v.acc_dtype(r.dtype)
    i, j = torch.triu_indices(k, k, offset=1, device=r.device)
    ra = r.to(acc)
    pair_terms = F.logsigmoid(ra[:, i] - ra[:, j])  # [B, C(K, 2)]
    per_prompt = -pair_terms.sum(dim=-1) / math.comb(k, 2)
    return per_prompt.mean().to(r.dtype)
