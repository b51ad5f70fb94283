"""The whole actor loss of a trainer step: everything the oracle knows about ``actor_loss``, composed from the
families of its three terms (the policy losses, ``kl_loss`` and ``aggregate`` for the entropy bonus).

- inputs: a case of the policy loss ``loss`` names, drawn by that family's own strategy (its options, its
  regimes, its aggregation), plus the KL term (a reference policy within |Delta| <= 2, the estimator kind, its own
  aggregation) and the entropy bonus (per-token entropies in [0, 5], their own aggregation), each with a
  coefficient that may be 0;
- the tolerance and the gradient: the sum of the three terms' own, weighted by their coefficients; where the
  policy loss is defined by its gradient (``sg()`` inside), the finite-difference test reads the actor as ``pg``
  with that gradient frozen;
- the variants: a term missing or with the wrong sign, each term aggregated by another mode (``kl_agg`` /
  ``entropy_agg`` ignored, TRL's token-mean entropy), another KL estimator.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
from hypothesis import strategies as st

from rlhf_oracle import reference as R

from ..axes import aggregation as agg
from ..axes import kl, ppo
from ..cases import Accepted, Case, Draw, Fixed, Params, fill_masked, float_arrays, log_ratios
from ..gradients import Grad
from ..registry import REGISTRY, Conditioning, FormulaSpec, register
from ..variants import Variant

__all__ = ["ACTOR_LOSS"]

POLICY = {"ppo": "policy_loss", "pg": "pg_loss", "cispo": "cispo_loss", "gspo": "gspo_loss", "sapo": "sapo_loss"}
"""The policy loss each ``loss`` names."""
_OWN = frozenset(inspect.signature(R.actor_loss).parameters) - {"agg", "max_tokens", "loss_options"}


def _arrays(loss: str) -> tuple[str, ...]:
    return ("logp", "advantages", "mask") if loss == "pg" else ("logp", "logp_old", "advantages", "mask")


# ----------------------------------------------------------------------------------------------------------------
# inputs: the policy family's case, then the KL and entropy terms


@st.composite
def _cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    p = Params("actor_loss", draw, fixed, accepted)
    loss = str(p("loss", st.sampled_from(R.ACTOR_LOSSES)))
    sub_fixed = {k: v for k, v in fixed.items() if k not in _OWN}
    sub: Case = draw(REGISTRY[POLICY[loss]].strategy(sub_fixed, accepted))
    assert sub.mask is not None
    m, named = sub.mask, sub.named()
    logp = np.asarray(named["logp"], dtype=np.float64)
    shape = logp.shape
    old = named.get("logp_old")
    if old is None:  # pg reads no old policy; the trainer still passes one
        old = fill_masked(logp - draw(log_ratios(shape, limit=0.3)), m, sub.fill, seed=7)
    kwargs = {k: v for k, v in sub.kwargs.items()}
    per_token = {*sub.per_token, "logp_old"}
    if float(p("kl_coef", st.sampled_from([0.0, 0.05, 1.0]))) > 0:
        p("kl_kind", st.sampled_from(kl.DRAW_ORDER))
        p("kl_agg", st.sampled_from([None, *agg.MODES]))
        p("kl_ratio", st.booleans())
        valid_logp = np.where(m, logp, -1.0)
        kwargs["logp_ref"] = fill_masked(valid_logp - draw(log_ratios(shape, limit=2.0)), m, sub.fill, seed=8)
        per_token.add("logp_ref")
    if float(p("entropy_coef", st.sampled_from([0.0, 0.01, 0.5]))) > 0:
        p("entropy_agg", st.sampled_from([None, *agg.MODES]))
        kwargs["entropy"] = fill_masked(draw(float_arrays(shape, 0.0, 5.0)), m, sub.fill, seed=9)
        per_token.add("entropy")
    kwargs.update(p.finish())
    args = (named["logp"], old, named["advantages"], m)
    names = ("logp", "logp_old", "advantages", "mask")
    return Case("actor_loss", args, names, kwargs, m, tuple(sorted(per_token)), sub.fill)


# ----------------------------------------------------------------------------------------------------------------
# the three terms as cases of their own families


def policy_case(c: Case) -> Case:
    """The case of the policy loss term (its own formula, options and aggregation)."""
    loss = str(c.arg("loss"))
    formula = POLICY[loss]
    params = inspect.signature(getattr(R, formula)).parameters
    arrays = _arrays(loss)
    named = c.named()
    kwargs = {k: v for k, v in c.kwargs.items() if k in params and k not in arrays}
    per_token = tuple(n for n in c.per_token if n in params)
    return Case(formula, tuple(named[a] for a in arrays), arrays, kwargs, c.mask, per_token, c.fill)


def _max_tokens(c: Case) -> dict[str, object]:
    return {"max_tokens": c.kwargs["max_tokens"]} if "max_tokens" in c.kwargs else {}


def kl_case(c: Case) -> Case | None:
    """The case of the KL loss term (None when kl_coef = 0)."""
    if float(c.arg("kl_coef")) == 0:
        return None
    n = c.named()
    kwargs = {"kind": c.arg("kl_kind"), "agg": c.arg("kl_agg") or c.arg("agg"), **_max_tokens(c),
              **dict(c.arg("kl_options") or {})}  # fmt: skip
    if c.arg("kl_ratio"):
        kwargs["logp_old"] = n["logp_old"]
    return Case("kl_loss", (n["logp"], n["logp_ref"], c.mask), ("logp", "logp_ref", "mask"), kwargs, c.mask,
                ("logp", "logp_ref"), c.fill)  # fmt: skip


def entropy_case(c: Case) -> Case | None:
    """The case of the entropy bonus's aggregation (None when entropy_coef = 0)."""
    if float(c.arg("entropy_coef")) == 0:
        return None
    kwargs = {"agg": c.arg("entropy_agg") or c.arg("agg"), **_max_tokens(c)}
    return Case("aggregate", (c.named()["entropy"], c.mask), ("values", "mask"), kwargs, c.mask, ("values",), c.fill)


def _terms(c: Case) -> list[tuple[float, Case, str]]:
    """(coefficient, case, the name of its log-prob input) of each term present."""
    out: list[tuple[float, Case, str]] = [(1.0, policy_case(c), "logp")]
    k = kl_case(c)
    if k is not None:
        out.append((float(c.arg("kl_coef")), k, "logp"))
    h = entropy_case(c)
    if h is not None:
        out.append((-float(c.arg("entropy_coef")), h, "values"))
    return out


# ----------------------------------------------------------------------------------------------------------------
# the maths: tolerance and gradient, summed over the terms


def _tolerance(c: Case) -> Conditioning:
    cond, scale = 1.0, 0.0
    for coef, term, _ in _terms(c):
        t_cond, t_scale = REGISTRY[term.formula].tolerance(term)
        cond, scale = max(cond, t_cond), scale + abs(coef) * float(np.max(t_scale, initial=0.0))
    return cond, scale


def _add(total: Grad | None, g: Grad, coef: float) -> Grad:
    """``total + coef * g``; a kink of either term is a kink of the sum. The subgradients of a sum are the sums of
    the terms' subgradients: where both terms kink, the interval between the smallest and the largest corner (the
    reference's own value lies inside it)."""
    value, alt = coef * g.value, coef * g.alternative
    scale = abs(coef) * (np.abs(g.value) if g.scale is None else g.scale)
    if total is None:
        return Grad(value, alt, scale)
    assert total.scale is not None
    t_lo, t_hi = total.interval()
    lo, hi = t_lo + np.fmin(value, alt), t_hi + np.fmax(value, alt)
    kinked = ~(np.isnan(total.alternative) & np.isnan(alt))
    sum_value = total.value + value
    # the interval as (alternative, further): its two ends
    return Grad(sum_value, np.where(kinked, lo, np.nan), total.scale + scale, np.where(kinked, hi, np.nan))


def _gradient(c: Case, w: np.ndarray) -> dict[str, Grad]:
    logp: Grad | None = None
    out: dict[str, Grad] = {}
    for coef, term, name in _terms(c):
        grads = REGISTRY[term.formula].gradient(term, w)  # type: ignore[misc]
        if name == "values":
            out["entropy"] = _add(None, grads["values"], coef)
            continue
        logp = _add(logp, grads["logp"], coef)
    assert logp is not None
    return {"logp": logp, **out}


def _gradient_of(c: Case) -> Case:
    """Where the policy loss is defined by its gradient: the actor with loss="pg" whose frozen weights give the
    policy term's gradient (agg "seq-mean-token-sum", A = -1, w = B g), the KL and entropy terms unchanged."""
    sub = policy_case(c)
    if REGISTRY[sub.formula].gradient_of is None:
        return c
    assert c.mask is not None
    g = REGISTRY[sub.formula].gradient(sub, np.asarray(1.0))["logp"].value  # type: ignore[misc]
    logp = np.asarray(c.named()["logp"], dtype=np.float64)
    kwargs = {k: v for k, v in c.kwargs.items() if k in _OWN}
    kwargs.update(loss="pg", agg="seq-mean-token-sum", weights=np.where(c.mask, g * c.mask.shape[0], 0.0),
                  kl_agg=c.arg("kl_agg") or c.arg("agg"), entropy_agg=c.arg("entropy_agg") or c.arg("agg"),
                  **_max_tokens(c))  # fmt: skip
    args = (logp, c.args[1], -np.ones_like(logp), c.mask)
    return Case("actor_loss", args, c.arg_names, kwargs, c.mask, c.per_token, c.fill)


# ----------------------------------------------------------------------------------------------------------------
# variants


def _without(c: Case, **changes: object) -> float:
    return float(R.actor_loss(*c.args, **{**c.kwargs, **changes}))


def _variants() -> list[Variant]:
    def term_value(c: Case, which: str) -> float:
        term = kl_case(c) if which == "kl" else entropy_case(c)
        if term is None:
            raise NotImplementedError
        return float(REGISTRY[term.formula].reference(*term.args, **term.kwargs))

    def term_as(which: str, sign: float) -> Callable[[Case], float]:
        """The actor loss with the term ``which`` entering as ``sign * coef * term`` (0: missing)."""
        coef = "kl_coef" if which == "kl" else "entropy_coef"

        def compute(c: Case) -> float:
            value = term_value(c, which)  # raises where the term is absent
            return _without(c, **{coef: 0.0}) + sign * float(c.arg(coef)) * value

        return compute

    out = [
        Variant("KL term missing", "kl_coef * KL not added (logp_ref ignored)", term_as("kl", 0.0)),
        Variant("KL term subtracted", "- kl_coef * KL: the penalty rewards moving away from the reference",
                term_as("kl", -1.0)),
        Variant("entropy term missing", "the entropy bonus not subtracted", term_as("entropy", 0.0)),
        Variant("entropy added", "+ entropy_coef * H: entropy penalised instead of rewarded (sign)",
                term_as("entropy", 1.0)),
    ]  # fmt: skip
    for mode in agg.MODES:
        for which, name in (("kl", "kl_agg"), ("entropy", "entropy_agg")):

            def compute(c: Case, which: str = which, name: str = name, mode: str = mode) -> float:
                term = kl_case(c) if which == "kl" else entropy_case(c)
                if term is None or term.arg("agg") == mode:
                    raise NotImplementedError
                return _without(c, **{name: mode})

            note = " (TRL's entropy)" if (which, mode) == ("entropy", "token-mean") else ""
            text = f"the {'KL term' if which == 'kl' else 'entropy bonus'} aggregated by {mode!r}{note}"
            out.append(Variant(f"{name}={mode!r}", text, compute, {name: mode}))
    for kind in kl.KINDS:

        def other_kind(c: Case, kind: str = kind) -> float:
            if kl_case(c) is None or c.arg("kl_kind") == kind:
                raise NotImplementedError
            return _without(c, kl_kind=kind)

        out.append(Variant(f"kl_kind={kind!r}", f"the {kind} estimator in the KL term", other_kind, {"kl_kind": kind}))
    for ratio in (True, False):

        def other_ratio(c: Case, ratio: bool = ratio) -> float:
            if kl_case(c) is None or bool(c.arg("kl_ratio")) == ratio:
                raise NotImplementedError
            return _without(c, kl_ratio=ratio)

        text = ("the KL term times pi/pi_old (TRL's use_bias_correction_kl)" if ratio else
                "the KL term without the ratio to pi_old (use_bias_correction_kl=False)")  # fmt: skip
        out.append(Variant(f"kl_ratio={ratio}", text, other_ratio, {"kl_ratio": ratio}))
    return out


def _inert(c: Case) -> tuple[str, ...]:
    out = []
    if float(c.arg("kl_coef")) == 0:
        out.append("logp_ref")
    if float(c.arg("entropy_coef")) == 0:
        out.append("entropy")
    if c.arg("loss") == "pg" and not (c.arg("kl_ratio") and float(c.arg("kl_coef")) > 0):
        out.append("logp_old")
    return tuple(out)


ACTOR_LOSS = register(
    FormulaSpec(
        id="actor_loss",
        reference=R.actor_loss,
        torch_name="actor_loss",
        strategy=_cases,
        tolerance=_tolerance,
        tolerance_note="the sum of the three terms' own tolerances (policy loss, KL loss, entropy aggregation), "
        "each times |its coefficient|.",
        differentiable=("logp", "entropy"),
        gradient=_gradient,
        gradient_of=_gradient_of,
        paper="verl, OpenRLHF and TRL actor losses; DeepSeekMath (Shao et al. 2024) eq. 3",
        equation="L_policy + beta KL - c_H H",
        docs_page="grpo-losses",
        derivations=(),
        conventions=("loss", "kl_kind", "kl_ratio", "agg", "kl_agg", "entropy_agg", "max_tokens", "kl_options"),
        variants=tuple(_variants()),
        exponentiates=True,
        stability=ppo.extreme,
        stability_note="log-ratios to the old policy to +-50, as for the policy losses",
        bad_hyper=(("loss", "grpo"), ("kl_coef", -0.1), ("entropy_coef", -1.0), ("kl_agg", "sum")),
        bad_input=agg.empty_row,
        inert=_inert,
    )
)
