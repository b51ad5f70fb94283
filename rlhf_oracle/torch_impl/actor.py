"""The whole actor loss of a trainer step: policy loss + KL loss term - entropy bonus (torch twin)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from . import _validation as v
from .grpo_losses import cispo_loss, gspo_loss, sapo_loss
from .kl import KL_ESTIMATORS, kl_loss
from .policy import AGGREGATION_MODES, aggregate, pg_loss, policy_loss

ACTOR_LOSSES = ("ppo", "pg", "cispo", "gspo", "sapo")
_POLICY_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "ppo": policy_loss,
    "pg": pg_loss,
    "cispo": cispo_loss,
    "gspo": gspo_loss,
    "sapo": sapo_loss,
}
_OWN = ("agg", "max_tokens")
KL_OPTIONS = ("grad", "log_ratio_clamp", "output_clamp")


def _options(loss: str) -> tuple[str, ...]:
    params = inspect.signature(_POLICY_LOSSES[loss]).parameters
    first_option = 3 if loss == "pg" else 4
    return tuple(name for name in list(params)[first_option:] if name not in _OWN)


def _kl_kwargs(kl_options: Mapping[str, Any] | None, logp_old: Any) -> dict[str, Any]:
    """kl_loss's keyword options: ``kl_options`` plus the ratio's ``logp_old`` when ``kl_ratio``."""
    out = dict(kl_options or {})
    if logp_old is not None:
        out["logp_old"] = logp_old
    return out


def actor_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss: str = "ppo",
    logp_ref: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_kind: str = "k3",
    kl_ratio: bool = False,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    agg: str = "seq-mean-token-mean",
    kl_agg: str | None = None,
    entropy_agg: str | None = None,
    max_tokens: int | None = None,
    kl_options: Mapping[str, Any] | None = None,
    **loss_options: Any,
) -> torch.Tensor:
    r"""Policy loss + ``kl_coef`` :func:`kl_loss` - ``entropy_coef`` agg(entropy), a 0-dim tensor.

    Each term is its own twin (:func:`policy_loss`, :func:`pg_loss`, :func:`cispo_loss`, :func:`gspo_loss`,
    :func:`sapo_loss`; :func:`kl_loss`; :func:`aggregate`) with its own aggregation (``kl_agg``/``entropy_agg``
    None: as ``agg``); a term whose coefficient is 0 is not computed. ``entropy`` is differentiated (pass the
    entropy computed from the logits). See :func:`rlhf_oracle.reference.actor_loss`.
    """
    fn = "actor_loss"
    v.choice(fn, "loss", loss, ACTOR_LOSSES)
    v.choice(fn, "agg", agg, AGGREGATION_MODES)
    for name, mode in (("kl_agg", kl_agg), ("entropy_agg", entropy_agg)):
        if mode is not None:
            v.choice(fn, name, mode, AGGREGATION_MODES)
    beta = v.non_negative(fn, "kl_coef", kl_coef)
    c_h = v.non_negative(fn, "entropy_coef", entropy_coef)
    v.choice(fn, "kl_kind", kl_kind, KL_ESTIMATORS)
    options = _options(loss)
    for name in loss_options:
        if name not in options:
            raise ValueError(f"{fn}: '{name}' is not an option of loss={loss!r}; its options: {options}")
    for name in kl_options or {}:
        if name not in KL_OPTIONS:
            raise ValueError(f"{fn}: 'kl_options' may hold {KL_OPTIONS}, got {name!r}")
    if beta > 0 and logp_ref is None:
        raise ValueError(f"{fn}: 'logp_ref' is required when kl_coef > 0, got None")
    if c_h > 0 and entropy is None:
        raise ValueError(f"{fn}: 'entropy' is required when entropy_coef > 0, got None")
    ratio = v.flag(fn, "kl_ratio", kl_ratio)
    if (loss != "pg" or (ratio and beta > 0)) and logp_old is None:
        need = f"loss={loss!r}" if loss != "pg" else "kl_ratio=True"
        raise ValueError(f"{fn}: 'logp_old' is required for {need}, got None")

    if loss == "pg":
        total = pg_loss(logp, advantages, mask, agg=agg, max_tokens=max_tokens, **loss_options)
    else:
        total = _POLICY_LOSSES[loss](logp, logp_old, advantages, mask, agg=agg, max_tokens=max_tokens, **loss_options)
    if beta > 0:
        assert logp_ref is not None
        kl = kl_loss(
            logp,
            logp_ref,
            mask,
            kl_kind,
            kl_agg or agg,
            max_tokens=max_tokens,
            **_kl_kwargs(kl_options, logp_old if ratio else None),
        )
        total = total + beta * kl.to(total.dtype)
    if c_h > 0:
        assert entropy is not None
        bonus = aggregate(entropy, mask, entropy_agg or agg, max_tokens=max_tokens)
        total = total - c_h * bonus.to(total.dtype)
    return total
