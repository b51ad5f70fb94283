"""The whole actor loss of a trainer step: a policy loss, plus the KL penalty as a loss term, minus an entropy
bonus, each aggregated by its own mode."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from . import _validation as v
from .grpo_losses import cispo_loss, gspo_loss, sapo_loss
from .kl import KL_ESTIMATORS, kl_loss
from .policy import AGGREGATION_MODES, aggregate, pg_loss, policy_loss

ACTOR_LOSSES = ("ppo", "pg", "cispo", "gspo", "sapo")
_POLICY_LOSSES: dict[str, Callable[..., float]] = {
    "ppo": policy_loss,
    "pg": pg_loss,
    "cispo": cispo_loss,
    "gspo": gspo_loss,
    "sapo": sapo_loss,
}
_OWN = ("agg", "max_tokens")  # set by actor_loss itself, not through loss_options
KL_OPTIONS = ("grad", "log_ratio_clamp", "output_clamp")
"""What ``kl_options`` may hold (the kind, aggregation and ``max_tokens`` are ``actor_loss``'s own)."""


def policy_loss_options(loss: str) -> tuple[str, ...]:
    """The keyword options of the policy loss ``loss`` names (what ``**loss_options`` may hold)."""
    params = inspect.signature(_POLICY_LOSSES[loss]).parameters
    first_option = 3 if loss == "pg" else 4  # after the arrays (pg: logp, advantages, mask)
    return tuple(name for name in list(params)[first_option:] if name not in _OWN)


def _kl_kwargs(kl_options: Mapping[str, Any] | None, logp_old: Any) -> dict[str, Any]:
    """kl_loss's keyword options: ``kl_options`` plus the ratio's ``logp_old`` when ``kl_ratio``."""
    out = dict(kl_options or {})
    if logp_old is not None:
        out["logp_old"] = logp_old
    return out


def actor_loss(
    logp: Any,
    logp_old: Any,
    advantages: Any,
    mask: Any,
    *,
    loss: str = "ppo",
    logp_ref: Any = None,
    kl_coef: float = 0.0,
    kl_kind: str = "k3",
    kl_ratio: bool = False,
    entropy: Any = None,
    entropy_coef: float = 0.0,
    agg: str = "seq-mean-token-mean",
    kl_agg: str | None = None,
    entropy_agg: str | None = None,
    max_tokens: int | None = None,
    kl_options: Mapping[str, Any] | None = None,
    **loss_options: Any,
) -> float:
    r"""The actor loss of one trainer step: policy loss + KL loss term - entropy bonus.

    .. math::

        \mathcal{L}_{actor}(\theta) = \mathcal{L}_{policy}(\theta)
        + \beta\,\operatorname*{agg_{KL}}_{b,t}\big(\tilde k(\log\pi_\theta - \log\pi_{ref})\big)
        - c_H\,\operatorname*{agg_H}_{b,t}\big(\mathcal{H}_{b,t}\big)

    with :math:`\mathcal{L}_{policy}` the loss ``loss`` names (``"ppo"``: :func:`policy_loss`, ``"pg"``:
    :func:`pg_loss`, ``"cispo"``, ``"gspo"``, ``"sapo"``), the KL term :func:`kl_loss` of kind ``kl_kind``, and
    :math:`\mathcal{H}_{b,t}` the per-token entropy (e.g. :func:`entropy_from_logits`, differentiated through
    the logits). Gradient: the sum of the three terms' gradients (each term's own ``sg()`` conventions).

    Source: the actor losses of verl (``compute_policy_loss`` + ``kl_loss`` * ``kl_loss_coef`` -
    ``entropy_coeff`` * entropy), OpenRLHF (``PolicyLoss`` + ``kl_loss_coef`` * KL, ``entropy_loss_coef``) and
    TRL's GRPO (``beta`` * KL added per token inside ``per_token_loss``); the KL term is GRPO's, DeepSeekMath
    eq. 3.

    Shapes: ``logp``, ``logp_old``, ``advantages``, ``mask``, ``logp_ref`` and ``entropy`` (if given) [B, T]
    -> float (to minimise).

    Conventions:
        - ``agg`` aggregates the policy loss; ``kl_agg`` and ``entropy_agg`` (None: as ``agg``) the other two terms.
          verl aggregates all three with ``loss_agg_mode``; OpenRLHF the KL with the policy's ``aggregate_loss``;
          TRL adds the KL per token inside the policy loss (its ``loss_type`` applies: ``kl_agg=None``) and
          takes the entropy as a token mean (``entropy_agg="token-mean"``). ``max_tokens`` is passed to every
          aggregation (the ``"seq-mean-token-sum-norm"`` mode).
        - ``**loss_options`` go to the policy loss (e.g. ``clip_eps`` for ``"ppo"``, ``weight_max`` for
          ``"cispo"``, ``weights`` for the IS weights); an option the chosen loss does not take is an error.
          ``kl_options`` go to :func:`kl_loss` (``grad``, ``log_ratio_clamp``, ``output_clamp``).
        - ``kl_ratio=True`` (TRL's ``use_bias_correction_kl``, its default when ``beta > 0``): the KL term is
          ratio-corrected with the actor's ``logp_old`` (``kl_loss(..., logp_old=logp_old)``: each term times
          the non-detached :math:`\pi_\theta/\pi_{old}`).
        - ``kl_coef = 0`` (default) / ``entropy_coef = 0``: the term is not computed and ``logp_ref`` /
          ``entropy`` are not read; a positive coefficient requires its array. ``loss="pg"`` does not read
          ``logp_old`` (REINFORCE has no old policy; it may be None).
        - both coefficients are >= 0: the entropy enters as a bonus (subtracted from the loss).
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
    options = policy_loss_options(loss)
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
        kl = kl_loss(
            logp,
            logp_ref,
            mask,
            kl_kind,
            kl_agg or agg,
            max_tokens=max_tokens,
            **_kl_kwargs(kl_options, logp_old if ratio else None),
        )
        total += beta * kl
    if c_h > 0:
        total -= c_h * aggregate(entropy, mask, entropy_agg or agg, max_tokens=max_tokens)
    return float(total)
