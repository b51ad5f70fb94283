"""The InstructGPT objective and its per-token form: the KL folded into the reward, and the pretraining term."""

from __future__ import annotations

import torch

from . import _validation as v
from .kl import KL_ESTIMATORS, _estimate
from .policy import AGGREGATION_MODES, _aggregate

SCORE_POSITIONS = ("last", "after_last")


def _scores_like(fn: str, scores: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
    s = v.as_float(fn, "scores", scores, ndim=1, shape_doc="[B]")
    if s.shape[0] != lp.shape[0]:
        raise ValueError(f"{fn}: 'scores' has shape {v.shape_str(s.shape)}, expected ({lp.shape[0]},) to match 'logp'")
    return s


def kl_shaped_rewards(
    scores: torch.Tensor,
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    kind: str = "k1",
    *,
    score_position: str = "last",
) -> torch.Tensor:
    r"""Per-token rewards with the KL penalty folded in: :math:`r_{b,t} = -\beta k_{b,t} + 1[t = t^*_b] R_b`.

    ``k`` is :func:`kl_estimate` of ``kind`` at valid positions; 0 at masked positions. ``t*`` is the last valid
    index of the row (``"last"``: the EOS token, verl/OpenRLHF; with holes, the last *valid* index) or the one
    right after it (``"after_last"``: TRL PPO / DeepSpeed-Chat, a masked slot). Vectorised: the last valid index
    is ``max_t where(m, t, -1)``. Ziegler et al. 2019; see :func:`rlhf_oracle.reference.kl_shaped_rewards`.

    Shapes: ``scores`` [B]; ``logp``, ``logp_ref``, ``mask`` [B, T] -> [B, T].
    Empty rows and ``"after_last"`` rows that end at T - 1 are refused (value checks); with the checks off
    their score is dropped.
    """
    fn = "kl_shaped_rewards"
    lp = v.as_float(fn, "logp", logp, ndim=2, shape_doc="[B, T]")
    lr = v.as_float(fn, "logp_ref", logp_ref)
    v.same_shape(fn, "logp_ref", lr, "logp", lp)
    m = v.as_mask(fn, mask, like=lp, like_name="logp")
    s = _scores_like(fn, scores, lp)
    b = v.non_negative(fn, "beta", beta)
    v.choice(fn, "kind", kind, KL_ESTIMATORS)
    v.choice(fn, "score_position", score_position, SCORE_POSITIONS)
    v.finite(fn, "scores", s)
    v.finite(fn, "logp", lp, m)
    v.finite(fn, "logp_ref", lr, m)

    out_dtype = torch.promote_types(torch.promote_types(lp.dtype, lr.dtype), s.dtype)
    acc = v.acc_dtype(out_dtype)
    length = lp.shape[1]
    positions = torch.arange(length, device=lp.device)
    last = torch.where(m, positions, -1).amax(dim=-1) if length else m.new_full((m.shape[0],), -1, dtype=torch.long)
    if v.value_checks_enabled() and m.shape[0]:
        empty = last < 0
        if bool(empty.any()):
            i = int(torch.nonzero(empty)[0, 0])
            raise ValueError(f"{fn}: 'mask' row {i} has no valid token; the score has no position")
        if score_position == "after_last":
            full = last == length - 1
            if bool(full.any()):
                i = int(torch.nonzero(full)[0, 0])
                raise ValueError(
                    f"{fn}: 'mask' row {i} ends at the last position; score_position='after_last' needs a pad slot"
                )
    delta = torch.where(m, lp.to(acc), 0.0) - torch.where(m, lr.to(acc), 0.0)
    kl = _estimate(delta, kind, acc)
    rewards = torch.where(m, -b * kl, 0.0)
    target = last if score_position == "last" else torch.where(last >= 0, last + 1, -1)
    at_score = (positions[None, :] == target[:, None]) & (target[:, None] >= 0)
    rewards = torch.where(at_score, rewards + s.to(acc)[:, None], rewards)
    return rewards.to(out_dtype)


def ptx_loss(logp: torch.Tensor, mask: torch.Tensor, agg: str = "token-mean") -> torch.Tensor:
    r"""Pretraining loss: ``-aggregate(logp, mask, agg)``, by default :math:`-\frac{\sum m \log\pi}{\sum m}`.

    InstructGPT eq. 2 (PPO-ptx); see :func:`rlhf_oracle.reference.ptx_loss`. Shapes: [B, T] -> 0-dim.
    """
    fn = "ptx_loss"
    lp = v.as_float(fn, "logp", logp, ndim=2, shape_doc="[B, T]")
    m = v.as_mask(fn, mask, like=lp, like_name="logp")
    v.choice(fn, "agg", agg, AGGREGATION_MODES)
    v.finite(fn, "logp", lp, m)
    return -_aggregate(fn, lp, m, agg, None)


def rlhf_objective(
    scores: torch.Tensor,
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    ptx_logp: torch.Tensor | None = None,
    ptx_mask: torch.Tensor | None = None,
    gamma: float = 0.0,
) -> torch.Tensor:
    r"""InstructGPT objective (to maximise), a 0-dim tensor.

    :math:`\frac1B\sum_b [R_b - \beta\sum_t m(\log\pi - \log\pi_{ref})] - \gamma L_{ptx}`.
    ``gamma`` is the pretraining coefficient (not a discount); ``gamma != 0`` needs ``ptx_logp`` and
    ``ptx_mask``. Ouyang et al. 2022, eq. 2; see :func:`rlhf_oracle.reference.rlhf_objective`. Returns 0-dim.
    """
    fn = "rlhf_objective"
    lp = v.as_float(fn, "logp", logp, ndim=2, shape_doc="[B, T]")
    if lp.shape[0] == 0:  # a mean over the batch: as every reduction to a scalar, B = 0 is refused
        raise ValueError(f"{fn}: 'logp' must have shape [B, T] with B >= 1, got {v.shape_str(lp.shape)}")
    lr = v.as_float(fn, "logp_ref", logp_ref)
    v.same_shape(fn, "logp_ref", lr, "logp", lp)
    m = v.as_mask(fn, mask, like=lp, like_name="logp")
    s = _scores_like(fn, scores, lp)
    b = v.non_negative(fn, "beta", beta)
    g = v.non_negative(fn, "gamma", gamma)
    v.finite(fn, "scores", s)
    v.finite(fn, "logp", lp, m)
    v.finite(fn, "logp_ref", lr, m)
    if g != 0.0 and (ptx_logp is None or ptx_mask is None):
        raise ValueError(f"{fn}: 'ptx_logp' and 'ptx_mask' are required when gamma != 0, got gamma={gamma}")

    out_dtype = torch.promote_types(torch.promote_types(lp.dtype, lr.dtype), s.dtype)
    acc = v.acc_dtype(out_dtype)
    log_ratio = (torch.where(m, lp.to(acc), 0.0) - torch.where(m, lr.to(acc), 0.0)).sum(dim=-1)
    objective = (s.to(acc) - b * log_ratio).mean()
    if g != 0.0:
        assert ptx_logp is not None and ptx_mask is not None
        objective = objective - g * ptx_loss(ptx_logp, ptx_mask).to(acc)
    return objective.to(out_dtype)
