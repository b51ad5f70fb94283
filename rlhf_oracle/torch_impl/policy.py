"""Policy objectives: the PPO clipped surrogate, its analytic gradient, masked aggregation and the policy loss."""

from __future__ import annotations

import torch

from . import _validation as v

AGGREGATION_MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def _clip_bounds(
    fn: str, clip_eps: float, clip_eps_high: float | None, dual_clip: float | None
) -> tuple[float, float, float | None]:
    low = v.positive(fn, "clip_eps", clip_eps)
    if low >= 1:
        raise ValueError(f"{fn}: 'clip_eps' must be < 1, got {clip_eps}")
    high = low if clip_eps_high is None else v.positive(fn, "clip_eps_high", clip_eps_high)
    c = None if dual_clip is None else v.greater_than_one(fn, "dual_clip", dual_clip)
    return 1.0 - low, 1.0 + high, c


def _ratio_inputs(
    fn: str, logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    new = v.as_float(fn, "logp", logp)
    old = v.as_float(fn, "logp_old", logp_old)
    adv = v.as_float(fn, "advantages", advantages)
    v.same_shape(fn, "logp_old", old, "logp", new)
    v.same_shape(fn, "advantages", adv, "logp", new)
    return new, old, adv


def _surrogate(
    new: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, low: float, high: float, c: float | None
) -> torch.Tensor:
    """min(r A, clip(r) A) [and max(., c A) where A < 0], in the accumulation dtype.

    ``where`` with strict comparisons instead of ``minimum``/``maximum``: at a tie the unclipped branch is taken,
    so autograd gives exactly r A at the boundaries (as :func:`ppo_clip_grad` and the reference convention).
    """
    acc = v.acc_dtype(torch.promote_types(torch.promote_types(new.dtype, old.dtype), adv.dtype))
    new, old, adv = new.to(acc), old.to(acc), adv.to(acc)
    ratio = torch.exp(new - old)
    unclipped = ratio * adv
    clipped = ratio.clamp(low, high) * adv
    objective = torch.where(clipped < unclipped, clipped, unclipped)
    if c is not None:
        floor = c * adv
        objective = torch.where((adv < 0) & (floor > objective), floor, objective)
    return objective


def _out_dtype(*xs: torch.Tensor) -> torch.dtype:
    dtype = xs[0].dtype
    for x in xs[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype


def ppo_clip_objective(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float = 0.2,
    *,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
) -> torch.Tensor:
    r"""Per-step clipped surrogate :math:`\min(r A, \mathrm{clip}(r, 1-\epsilon, 1+\epsilon_{high}) A)`.

    :math:`r = e^{\log\pi - \log\pi_{old}}`. With ``dual_clip = c > 1``, :math:`\max(\cdot, c A)` where A < 0.
    Elementwise, any shape; bf16/fp16 input is computed in float32 and rounded once.
    See :func:`rlhf_oracle.reference.ppo_clip_objective` (Schulman et al. 2017, eq. 7; DAPO eq. 8; Ye et al. 2020).
    """
    fn = "ppo_clip_objective"
    new, old, adv = _ratio_inputs(fn, logp, logp_old, advantages)
    low, high, c = _clip_bounds(fn, clip_eps, clip_eps_high, dual_clip)
    for name, arr in (("logp", new), ("logp_old", old), ("advantages", adv)):
        v.finite(fn, name, arr)
    return _surrogate(new, old, adv, low, high, c).to(_out_dtype(new, old, adv))


def ppo_clip_grad(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float = 0.2,
    *,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
) -> torch.Tensor:
    r"""Analytic :math:`\partial L^{CLIP} / \partial \log\pi`: r A, or 0 where a clip binds (no autograd).

    Zero where A > 0 and r > 1 + eps_high; A < 0 and r < 1 - eps; (dual clip) A < 0 and r > c. At exact
    boundaries: r A. See :func:`rlhf_oracle.reference.ppo_clip_grad`.
    """
    fn = "ppo_clip_grad"
    new, old, adv = _ratio_inputs(fn, logp, logp_old, advantages)
    low, high, c = _clip_bounds(fn, clip_eps, clip_eps_high, dual_clip)
    for name, arr in (("logp", new), ("logp_old", old), ("advantages", adv)):
        v.finite(fn, name, arr)
    out_dtype = _out_dtype(new, old, adv)
    acc = v.acc_dtype(out_dtype)
    new, old, adv = new.detach().to(acc), old.detach().to(acc), adv.detach().to(acc)
    ratio = torch.exp(new - old)
    flat = ((adv > 0) & (ratio > high)) | ((adv < 0) & (ratio < low))
    if c is not None:
        flat = flat | ((adv < 0) & (ratio > c))
    return torch.where(flat, 0.0, ratio * adv).to(out_dtype)


def _aggregate(fn: str, x: torch.Tensor, m: torch.Tensor, mode: str, max_tokens: int | None) -> torch.Tensor:
    """The reduction on validated inputs; ``x`` must already be 0 (finite) at masked positions or is where-ed."""
    v.choice(fn, "agg", mode, AGGREGATION_MODES)
    batch, length = x.shape
    if batch == 0:
        raise ValueError(f"{fn}: 'mask' must have shape [B, T] with B >= 1, got {v.shape_str(m.shape)}")
    acc = v.acc_dtype(x.dtype)
    xm = torch.where(m, x.to(acc), 0.0)
    row_sums = xm.sum(dim=-1)
    if mode == "seq-mean-token-mean":
        v.no_empty_rows(fn, m, mode)
        out = (row_sums / m.sum(dim=-1).to(acc)).mean()
    elif mode == "token-mean":
        v.not_empty(fn, m)
        out = row_sums.sum() / m.sum().to(acc)
    elif mode == "seq-mean-token-sum":
        out = row_sums.mean()
    else:  # "seq-mean-token-sum-norm"
        norm = length if max_tokens is None else max_tokens
        out = row_sums.sum() / (batch * norm)
    return out.to(x.dtype)


def aggregate(
    values: torch.Tensor, mask: torch.Tensor, agg: str = "seq-mean-token-mean", *, max_tokens: int | None = None
) -> torch.Tensor:
    r"""Masked reduction of ``[B, T]`` values to a 0-dim tensor under one of :data:`AGGREGATION_MODES`.

    ``seq-mean-token-mean``: :math:`\frac1B\sum_b \frac{\sum_t m x}{\sum_t m}`; ``token-mean``:
    :math:`\frac{\sum m x}{\sum m}`; ``seq-mean-token-sum``: :math:`\frac1B\sum_b\sum_t m x`;
    ``seq-mean-token-sum-norm``: :math:`\frac{1}{B L}\sum_{b,t} m x` (L = ``max_tokens`` or T).
    Sums in float32 for bf16/fp16. See :func:`rlhf_oracle.reference.aggregate`.
    """
    fn = "aggregate"
    x = v.as_float(fn, "values", values, ndim=2, shape_doc="[B, T]")
    m = v.as_mask(fn, mask, like=x, like_name="values")
    v.choice(fn, "agg", agg, AGGREGATION_MODES)
    v.finite(fn, "values", x, m)
    return _aggregate(fn, x, m, agg, v.optional_positive_int(fn, "max_tokens", max_tokens))


def policy_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    agg: str = "seq-mean-token-mean",
    *,
    max_tokens: int | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Token-level PPO policy loss: ``-aggregate(sg(weights) * ppo_clip_objective(...), mask, agg)``, 0-dim.

    Masked positions are replaced by 0 *before* the ratio (``where``), so NaN/inf there reach neither the value
    nor the gradient; ``weights`` (decoupled PPO, rollout importance weights) are detached. See
    :func:`rlhf_oracle.reference.policy_loss` (DeepSeekMath eq. 1; DAPO; Ye et al. 2020; Hilton et al. 2021).
    """
    fn = "policy_loss"
    per_token, m, out_dtype, max_tokens = _per_token_objective(
        fn, logp, logp_old, advantages, mask, clip_eps, clip_eps_high, dual_clip, agg, max_tokens, weights
    )
    return -_aggregate(fn, per_token, m, agg, max_tokens).to(out_dtype)


def _per_token_objective(
    fn: str,
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    clip_eps_high: float | None,
    dual_clip: float | None,
    agg: str,
    max_tokens: int | None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.dtype, int | None]:
    """(per-token clipped objective times the detached ``weights``, mask, output dtype, max_tokens) of the policy
    loss on validated inputs; the masked inputs are replaced by 0 before the ratio (shared by the micro-batch
    shares of torch_impl.distributed)."""
    new, old, adv = _ratio_inputs(fn, logp, logp_old, advantages)
    if new.ndim != 2:
        raise ValueError(f"{fn}: 'logp' must have shape [B, T], got {v.shape_str(new.shape)}")
    m = v.as_mask(fn, mask, like=new, like_name="logp")
    w = None
    if weights is not None:
        w = v.as_float(fn, "weights", weights)
        v.same_shape(fn, "weights", w, "logp", new)
    v.choice(fn, "agg", agg, AGGREGATION_MODES)
    low, high, c = _clip_bounds(fn, clip_eps, clip_eps_high, dual_clip)
    for name, arr in (("logp", new), ("logp_old", old), ("advantages", adv)):
        v.finite(fn, name, arr, m)
    if w is not None:
        v.finite(fn, "weights", w, m)
    max_tokens = v.optional_positive_int(fn, "max_tokens", max_tokens)
    new, old, adv = (torch.where(m, arr, 0.0) for arr in (new, old, adv))
    per_token = _surrogate(new, old, adv, low, high, c)
    out_dtype = _out_dtype(new, old, adv)
    if w is not None:
        per_token = per_token * torch.where(m, w.detach(), 0.0).to(per_token.dtype)
        out_dtype = torch.promote_types(out_dtype, w.dtype)
    return per_token, m, out_dtype, max_tokens


PG_FORMS = ("logp", "ratio")


def pg_loss(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor | None = None,
    agg: str = "seq-mean-token-mean",
    *,
    form: str = "logp",
    max_tokens: int | None = None,
) -> torch.Tensor:
    r"""Plain policy-gradient loss :math:`-\mathrm{agg}(\mathrm{sg}(w) A \log\pi)`, a 0-dim tensor.

    ``form="ratio"`` writes the term as :math:`-\mathrm{sg}(w) A e^{\log\pi - \mathrm{sg}(\log\pi)}` (value
    :math:`-w A`, same gradient). ``weights`` and ``advantages`` are detached; masked positions are replaced by 0
    before anything is computed. See :func:`rlhf_oracle.reference.pg_loss` (Williams 1992; GPG, Chu et al. 2025).
    """
    fn = "pg_loss"
    new = v.as_float(fn, "logp", logp, ndim=2, shape_doc="[B, T]")
    adv = v.as_float(fn, "advantages", advantages)
    v.same_shape(fn, "advantages", adv, "logp", new)
    m = v.as_mask(fn, mask, like=new, like_name="logp")
    w = None
    if weights is not None:
        w = v.as_float(fn, "weights", weights)
        v.same_shape(fn, "weights", w, "logp", new)
    v.choice(fn, "agg", agg, AGGREGATION_MODES)
    v.choice(fn, "form", form, PG_FORMS)
    max_tokens = v.optional_positive_int(fn, "max_tokens", max_tokens)
    for name, arr in (("logp", new), ("advantages", adv), ("weights", w)):
        if arr is not None:
            v.finite(fn, name, arr, m)
    out_dtype = _out_dtype(new, adv) if w is None else _out_dtype(new, adv, w)
    acc = v.acc_dtype(out_dtype)
    new = torch.where(m, new, 0.0).to(acc)
    coef = torch.where(m, adv.detach(), 0.0).to(acc)
    if w is not None:
        coef = coef * torch.where(m, w.detach(), 0.0).to(acc)
    term = new if form == "logp" else torch.exp(new - new.detach())
    return -_aggregate(fn, coef * term, m, agg, max_tokens).to(out_dtype)
