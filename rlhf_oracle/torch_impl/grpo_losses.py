"""Policy losses of GRPO-era trainers beyond PPO-Clip (CISPO, SAPO, GSPO): vectorised, ``sg()`` as ``detach``.

Same names, argument order, defaults and messages as :mod:`rlhf_oracle.reference.grpo_losses`; masked positions
are replaced by 0 before anything is computed, bf16/fp16 inputs are computed in float32 and the loss rounded once.
"""

from __future__ import annotations

import torch

from . import _validation as v
from .policy import AGGREGATION_MODES, _aggregate, _out_dtype, _ratio_inputs


def _token_inputs(
    fn: str,
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    agg: str,
    max_tokens: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int | None]:
    new, old, adv = _ratio_inputs(fn, logp, logp_old, advantages)
    if new.ndim != 2:
        raise ValueError(f"{fn}: 'logp' must have shape [B, T], got {v.shape_str(new.shape)}")
    m = v.as_mask(fn, mask, like=new, like_name="logp")
    v.choice(fn, "agg", agg, AGGREGATION_MODES)
    return new, old, adv, m, v.optional_positive_int(fn, "max_tokens", max_tokens)


def _masked(
    fn: str, new: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, m: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.dtype]:
    """Finite check at valid positions, then the three inputs with 0 at masked ones, in the accumulation dtype
    (and the output dtype)."""
    for name, arr in (("logp", new), ("logp_old", old), ("advantages", adv)):
        v.finite(fn, name, arr, m)
    out_dtype = _out_dtype(new, old, adv)
    acc = v.acc_dtype(out_dtype)
    return (*(torch.where(m, x, 0.0).to(acc) for x in (new, old, adv)), out_dtype)  # type: ignore[return-value]


def cispo_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    weight_max: float = 5.0,
    weight_min: float | None = None,
    agg: str = "token-mean",
    *,
    max_tokens: int | None = None,
) -> torch.Tensor:
    r"""CISPO: :math:`-\mathrm{agg}(\mathrm{sg}(\mathrm{clip}(r, w_{min}, w_{max}))\,A\log\pi)`, a 0-dim tensor.

    See :func:`rlhf_oracle.reference.cispo_loss` (MiniMax-M1 2025; ScaleRL cap 5).
    """
    fn = "cispo_loss"
    new, old, adv, m, max_tokens = _token_inputs(fn, logp, logp_old, advantages, mask, agg, max_tokens)
    hi = v.positive(fn, "weight_max", weight_max)
    lo = None if weight_min is None else v.non_negative(fn, "weight_min", weight_min)
    if lo is not None and lo >= hi:
        raise ValueError(f"{fn}: 'weight_min' must be < weight_max = {hi}, got {weight_min}")
    new, old, adv, out_dtype = _masked(fn, new, old, adv, m)
    weight = torch.exp(new.detach() - old).clamp(min=lo, max=hi)
    per_token = weight * adv.detach() * new
    return -_aggregate(fn, per_token, m, agg, max_tokens).to(out_dtype)


def sapo_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    agg: str = "seq-mean-token-mean",
    *,
    max_tokens: int | None = None,
) -> torch.Tensor:
    r"""SAPO: :math:`-\mathrm{agg}(\frac{4}{\tau}\sigma(\tau(r-1))A)`, :math:`\tau = \tau_{pos}` if A > 0 else
    :math:`\tau_{neg}`; a 0-dim tensor. See :func:`rlhf_oracle.reference.sapo_loss` (Gao et al. 2025)."""
    fn = "sapo_loss"
    new, old, adv, m, max_tokens = _token_inputs(fn, logp, logp_old, advantages, mask, agg, max_tokens)
    t_pos = v.positive(fn, "tau_pos", tau_pos)
    t_neg = v.positive(fn, "tau_neg", tau_neg)
    new, old, adv, out_dtype = _masked(fn, new, old, adv, m)
    adv = adv.detach()
    tau = torch.full_like(new, t_neg).masked_fill_(adv > 0, t_pos)  # in the accumulation dtype, not float32
    gate = torch.sigmoid(tau * (torch.exp(new - old) - 1.0))
    per_token = (4.0 / tau) * gate * adv
    return -_aggregate(fn, per_token, m, agg, max_tokens).to(out_dtype)


def gspo_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 3e-4,
    clip_eps_high: float | None = 4e-4,
    agg: str = "seq-mean-token-mean",
    *,
    log_ratio_clamp: float | None = None,
    max_tokens: int | None = None,
) -> torch.Tensor:
    r"""GSPO-token: the PPO clip on :math:`s_{b,t} = \mathrm{sg}(s_b)\,\pi/\mathrm{sg}(\pi)`, :math:`s_b` the
    geometric mean of the row's token ratios; a 0-dim tensor. See :func:`rlhf_oracle.reference.gspo_loss`
    (Zheng et al. 2025, eq. 5 and 14-15)."""
    fn = "gspo_loss"
    new, old, adv, m, max_tokens = _token_inputs(fn, logp, logp_old, advantages, mask, agg, max_tokens)
    low = v.positive(fn, "clip_eps", clip_eps)
    if low >= 1:
        raise ValueError(f"{fn}: 'clip_eps' must be < 1, got {clip_eps}")
    high = low if clip_eps_high is None else v.positive(fn, "clip_eps_high", clip_eps_high)
    c = None if log_ratio_clamp is None else v.positive(fn, "log_ratio_clamp", log_ratio_clamp)
    new, old, adv, out_dtype = _masked(fn, new, old, adv, m)
    counts = m.sum(dim=-1, keepdim=True).clamp_min(1).to(new.dtype)
    seq_log_ratio = ((new - old).detach().sum(dim=-1, keepdim=True) / counts).expand_as(new)
    token_log_ratio = new - new.detach() + seq_log_ratio  # value log s_b, gradient 1 per token
    if c is not None:
        token_log_ratio = token_log_ratio.clamp(-c, c)
    ratio = torch.exp(token_log_ratio)
    adv = adv.detach()
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - low, 1.0 + high) * adv
    per_token = torch.where(clipped < unclipped, clipped, unclipped)
    return -_aggregate(fn, per_token, m, agg, max_tokens).to(out_dtype)
