"""Direct preference optimisation: the DPO loss on sequence log-probabilities (stable ``F.logsigmoid``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _validation as v


def dpo_loss(
    logp_chosen: torch.Tensor,
    logp_rejected: torch.Tensor,
    ref_logp_chosen: torch.Tensor,
    ref_logp_rejected: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r""":math:`-\frac1B\sum_b[(1-\varepsilon)\log\sigma(\beta h_b) + \varepsilon\log\sigma(-\beta h_b)]`, with
    :math:`h = (\log\pi_w - \log\pi_{ref,w}) - (\log\pi_l - \log\pi_{ref,l})`.

    Rafailov et al. 2023 eq. 7; label smoothing as conservative DPO. See :func:`rlhf_oracle.reference.dpo_loss`.
    Shapes: four [B] sequence log-probabilities -> 0-dim, in the promoted input dtype (computed in float32 for
    half-precision inputs).
    """
    fn = "dpo_loss"
    w = v.as_float(fn, "logp_chosen", logp_chosen, ndim=1, shape_doc="[B]")
    if w.shape[0] == 0:
        raise ValueError(f"{fn}: 'logp_chosen' must have shape [B] with B >= 1, got (0,)")
    others = {
        "logp_rejected": v.as_float(fn, "logp_rejected", logp_rejected),
        "ref_logp_chosen": v.as_float(fn, "ref_logp_chosen", ref_logp_chosen),
        "ref_logp_rejected": v.as_float(fn, "ref_logp_rejected", ref_logp_rejected),
    }
    for name, x in others.items():
        v.same_shape(fn, name, x, "logp_chosen", w)
    b = v.positive(fn, "beta", beta)
    eps = v.non_negative(fn, "label_smoothing", label_smoothing)
    if eps > 0.5:
        raise ValueError(f"{fn}: 'label_smoothing' must be in [0, 0.5], got {label_smoothing!r}")
    v.finite(fn, "logp_chosen", w)
    for name, x in others.items():
        v.finite(fn, name, x)
    out_dtype = w.dtype
    for x in others.values():
        out_dtype = torch.promote_types(out_dtype, x.dtype)
    acc = v.acc_dtype(out_dtype)
    h = (w.to(acc) - others["ref_logp_chosen"].to(acc)) - (
        others["logp_rejected"].to(acc) - others["ref_logp_rejected"].to(acc)
    )
    losses = -(1.0 - eps) * F.logsigmoid(b * h)
    if eps:
        losses = losses - eps * F.logsigmoid(-b * h)
    return losses.mean().to(out_dtype)
