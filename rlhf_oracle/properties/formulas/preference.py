"""Preference optimisation (DPO): everything the oracle knows about ``dpo_loss`` in one place.

- the maths inputs: [B] sequence log-probabilities (sums of token log-probs: tens of nats), a reference model
  near the policy or far from it, chosen/rejected margins of both signs, ``beta`` and ``label_smoothing`` drawn;
- the extreme regime (``stability``): implicit-reward gaps beta*h of 1e3-1e4, where a naive log(sigmoid(x))
  underflows to log(0) = -inf;
- the reference gradient (hand-derived, checked against finite differences of the reference in the tests);
- the known variants: beta ignored or applied twice, label smoothing ignored or flipped, the reference model
  dropped (a SimPO/ORPO-like reward), chosen and rejected swapped, the IPO squared loss, a batch sum, a naive
  log-sigmoid, the sign flipped;
- the tolerance and the registry entry (paper, equation, docs page, sympy derivation).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rlhf_oracle import reference as R

from .. import tolerances as tol
from ..axes.sigmoid import log_sigmoid, naive_neg_log_sigmoid, sigmoid
from ..cases import Accepted, Case, Draw, Fixed, Params, float_arrays
from ..gradients import Grad
from ..registry import Conditioning, FormulaSpec, register
from ..variants import Variant

__all__ = ["SPEC"]

_ARGS = ("logp_chosen", "logp_rejected", "ref_logp_chosen", "ref_logp_rejected")


# ----------------------------------------------------------------------------------------------------------------
# inputs


@st.composite
def _cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b = draw(st.integers(1, 8))
    ref_w = draw(float_arrays((b,), -80.0, -1.0))
    ref_l = draw(float_arrays((b,), -80.0, -1.0))
    spread = float(draw(st.sampled_from([0.5, 5.0, 30.0])))  # policy near or far from the reference
    w = ref_w + draw(float_arrays((b,), -spread, spread))
    lo = ref_l + draw(float_arrays((b,), -spread, spread))
    p = Params("dpo_loss", draw, fixed, accepted)
    p("beta", st.sampled_from([0.1, 0.5, 1.0, 0.01]))
    p("label_smoothing", st.sampled_from([0.0, 0.0, 0.1, 0.3]))
    return Case("dpo_loss", (w, lo, ref_w, ref_l), _ARGS, p.finish())


def _extreme(case: Case, draw: Draw) -> Case:
    """Implicit-reward gaps beta*h of 1e3-1e4: the chosen answer far more (or far less) likely than the reference
    says, on at least one pair."""
    w = np.array(case.args[0], dtype=np.float64)
    beta = float(case.arg("beta"))
    gaps = draw(hnp.arrays(np.float64, w.shape, elements=st.sampled_from([1e3, -1e3, 1e4, -1e4, 0.0])))
    gaps[0] = draw(st.sampled_from([1e4, -1e4, -3e3]))
    return case.with_inputs(logp_chosen=w + gaps / beta)


# ----------------------------------------------------------------------------------------------------------------
# the maths: h, the tolerance, the gradient


def _h(c: Case) -> np.ndarray:
    w, lo, rw, rl = (np.asarray(c.named()[k], dtype=np.float64) for k in _ARGS)
    return np.asarray((w - rw) - (lo - rl))


def _tolerance(c: Case) -> Conditioning:
    n = c.named()
    size = np.sum([np.abs(np.asarray(n[k], dtype=np.float64)) for k in _ARGS], axis=0)
    beta = float(c.arg("beta"))
    return tol.sum_cond(size.size), float(np.mean(1.0 + beta * size))


def _gradient(c: Case, w: np.ndarray) -> dict[str, Grad]:
    r"""dL/dh_b = -(beta/B) [(1 - eps) sigma(-beta h) - eps sigma(beta h)]; h is + logp_chosen - logp_rejected."""
    beta = float(c.arg("beta"))
    eps = float(c.arg("label_smoothing"))
    x = beta * _h(c)
    dh = -(beta / x.size) * ((1.0 - eps) * sigmoid(-x) - eps * sigmoid(x)) * float(w)
    nan = np.full(dh.shape, np.nan)
    return {"logp_chosen": Grad(dh, nan), "logp_rejected": Grad(-dh, nan)}


# ----------------------------------------------------------------------------------------------------------------
# variants


def _loss(c: Case, *, beta_scale: float = 1.0, eps: float | None = None, use_ref: bool = True, swap: bool = False,
          naive: bool = False, reduce: str = "mean", ref_sign: float = -1.0) -> float:  # fmt: skip
    n = c.named()
    beta = float(c.arg("beta")) * beta_scale
    smoothing = float(c.arg("label_smoothing")) if eps is None else eps
    w, lo, rw, rl = (np.asarray(n[k], dtype=np.float64) for k in _ARGS)
    h = (w + ref_sign * rw) - (lo + ref_sign * rl) if use_ref else (w - lo)
    if swap:
        h = -h
    if naive:
        log_sig, log_sig_neg = -naive_neg_log_sigmoid(beta * h), -naive_neg_log_sigmoid(-beta * h)
    else:
        log_sig, log_sig_neg = log_sigmoid(beta * h), log_sigmoid(-beta * h)
    with np.errstate(all="ignore"):
        losses = -(1.0 - smoothing) * log_sig - smoothing * log_sig_neg
    return float(losses.sum() if reduce == "sum" else losses.mean())


def _ipo(c: Case) -> float:
    beta = float(c.arg("beta"))
    return float(np.mean((_h(c) - 1.0 / (2.0 * beta)) ** 2))


def _smoothing_applies(c: Case) -> None:
    if not c.arg("label_smoothing"):
        raise NotImplementedError


def _smoothing_ignored(c: Case) -> float:
    _smoothing_applies(c)
    return _loss(c, eps=0.0)


def _smoothing_flipped(c: Case) -> float:
    _smoothing_applies(c)
    return _loss(c, eps=1.0 - float(c.kwargs["label_smoothing"]))


def _beta_ignored(c: Case) -> float:
    beta = float(c.arg("beta"))
    if beta == 1.0:
        raise NotImplementedError
    return _loss(c, beta_scale=1.0 / beta)


VARIANTS = [
    Variant("beta ignored", "log sigma(h) without the beta scale of the implicit reward", _beta_ignored),
    Variant("label_smoothing ignored", "plain DPO although label_smoothing was given", _smoothing_ignored),
    Variant("label_smoothing flipped", "the smoothing weights (1 - eps, eps) exchanged", _smoothing_flipped),
    Variant(
        "reference model dropped",
        "h = log pi_w - log pi_l without the reference log-ratios (a SimPO/ORPO-like implicit reward)",
        lambda c: _loss(c, use_ref=False),
    ),
    Variant(
        "reference log-probs added",
        "h = (log pi_w + log pi_ref_w) - (log pi_l + log pi_ref_l): the reference terms added instead of subtracted",
        lambda c: _loss(c, ref_sign=1.0),
    ),
    Variant("chosen and rejected swapped", "-log sigma(-beta h)", lambda c: _loss(c, swap=True)),
    Variant("IPO loss", "(h - 1/(2 beta))^2 (Azar et al. 2023, eq. 17; OpenRLHF DPOLoss(ipo=True))", _ipo),
    Variant("sum over the batch", "sum instead of mean over the pairs", lambda c: _loss(c, reduce="sum")),
    Variant(
        "log(sigmoid) computed naively",
        "log(sigmoid(beta h)) with sigmoid underflowing to 0 at large gaps: an infinite loss; use logsigmoid",
        lambda c: _loss(c, naive=True),
    ),
    Variant("sign flipped", "log sigma(beta h): the log-likelihood instead of the loss", lambda c: -_loss(c)),
]


# ----------------------------------------------------------------------------------------------------------------
# the registry entry

SPEC = register(
    FormulaSpec(
        id="dpo_loss",
        reference=R.dpo_loss,
        torch_name="dpo_loss",
        strategy=_cases,
        tolerance=_tolerance,
        tolerance_note="softplus of beta*h, where h is a difference of four sequence log-probs: absolute error "
        "~ eps * beta * (sum of their magnitudes), reduced over B.",
        differentiable=("logp_chosen", "logp_rejected"),
        gradient=_gradient,
        paper="Rafailov et al. 2023, Direct Preference Optimization; Mitchell 2023 (conservative DPO)",
        equation="eq. 7 (from the optimum, eq. 4)",
        docs_page="dpo",
        derivations=("dpo_optimum",),
        conventions=("beta", "label_smoothing"),
        variants=tuple(VARIANTS),
        stability=_extreme,
        stability_note="implicit-reward gaps beta*h of 1e3-1e4: sigmoid underflows to 0, log(0) = -inf",
        bad_hyper=(("beta", 0.0), ("beta", -0.1), ("label_smoothing", -0.1), ("label_smoothing", 0.7)),
    )
)
