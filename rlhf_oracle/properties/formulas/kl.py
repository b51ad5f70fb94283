"""KL divergence: everything the oracle knows about ``kl_estimate`` (the per-token estimators k1/k2/k3) and
``kl_exact`` (the full-vocabulary KL).

The estimators, their clamps and their variants are the shared axis :mod:`..axes.kl`; here:

- inputs: log-ratios |Delta| <= 2 (every estimator within +-10, where frameworks clamp), the kind and the
  log-ratio clamp drawn; logits of a policy and a reference model, equal, near or far; the extreme regime:
  log-ratios to +-1e4 (beyond exp's range in float32 and float64) and logit spreads of 1e3-1e4;
- the tolerance: the size of the estimator's terms; log-softmax errors on both sides for the exact KL;
- the gradients: 1, Delta, 1 - e^-Delta (zero beyond the clamp, both sides on it); p((log p - log q) - KL);
- the variants: another kind, the log-ratio flipped, negated, |k1|, k2 without 1/2, the clamps; the reverse KL,
  unnormalised logits.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from rlhf_oracle import reference as R

from .. import tolerances as tol
from ..axes import kl
from ..cases import (
    Accepted,
    Case,
    Draw,
    Fixed,
    Params,
    extreme_logits,
    far_log_ratios,
    float_arrays,
    log_ratios,
    logits,
    shape_bt,
)
from ..gradients import Grad
from ..registry import Conditioning, FormulaSpec, register
from ..variants import Variant, negated

__all__ = ["KL_ESTIMATE", "KL_EXACT"]


# ----------------------------------------------------------------------------------------------------------------
# inputs


@st.composite
def _estimate_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    shape = draw(st.sampled_from([(draw(st.integers(1, 16)),), shape_bt(draw)]))
    p = Params("kl_estimate", draw, fixed, accepted)
    p("kind", st.sampled_from(kl.KINDS))
    logp_ref = draw(float_arrays(shape, -20.0, 0.0))
    # |Delta| <= 2 keeps every estimator within +-10 (k3 <= e^2 - 3): far log-ratios and estimator values beyond
    # +-10, where frameworks clamp, are the stability property's inputs
    delta = draw(log_ratios(shape, limit=2.0))
    return Case("kl_estimate", (logp_ref + delta, logp_ref), ("logp", "logp_ref"), p.finish())


@st.composite
def _exact_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = shape_bt(draw, 3, 4)
    v = draw(st.integers(1, 8))
    z = draw(logits((b, t, v)))
    same = draw(st.booleans())
    z_ref = z.copy() if same else draw(logits((b, t, v)))
    if not same and draw(st.booleans()):
        z_ref = z + draw(float_arrays((b, t, v), -1.0, 1.0))  # nearby policies: KL small, cancellation-prone
    return Case("kl_exact", (z, z_ref), ("logits", "logits_ref"), dict(fixed))


def _estimate_extreme(c: Case, draw: Draw) -> Case:
    return far_log_ratios(c, draw, "logp_ref", "logp", very_far=True)


def _exact_extreme(c: Case, draw: Draw) -> Case:
    return extreme_logits(c, draw, "logits", "logits_ref")


# ----------------------------------------------------------------------------------------------------------------
# the maths: tolerances and gradients


def _tol_estimate(c: Case) -> Conditioning:
    return 1.0, kl.scale(c, tol.finite(c.args[0]), tol.finite(c.args[1]))


def _tol_exact(c: Case) -> Conditioning:
    z, zr = tol.finite(c.args[0]), tol.finite(c.args[1])
    return tol.sum_cond(z.shape[-1]), 1.0 + np.max(np.abs(z), -1) + np.max(np.abs(zr), -1)


def _estimate_gradient(c: Case, w: np.ndarray) -> dict[str, Grad]:
    delta = np.asarray(c.args[0], dtype=np.float64) - np.asarray(c.args[1], dtype=np.float64)
    kind = c.arg("kind")
    clamp = c.arg("log_ratio_clamp")
    d = np.clip(delta, -clamp, clamp) if clamp is not None else delta
    with np.errstate(over="ignore"):
        slope = {"k1": np.ones_like(d), "k2": d, "k3": -np.expm1(-d)}[kind]
    alt = np.full(d.shape, np.nan)
    if clamp is not None:
        outside = np.abs(delta) > clamp
        on_bound = np.abs(delta) == clamp
        alt = np.where(on_bound, 0.0, np.nan)
        slope = np.where(outside, 0.0, slope)
    with np.errstate(over="ignore"):
        terms = 1.0 + np.abs(d) + np.exp(np.minimum(-d, 700.0))  # 1 - e^-d cancels near d = 0
    return {"logp": Grad(w * slope, w * alt, np.abs(w) * terms)}


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(-1, keepdims=True)
    return np.asarray(shifted - np.log(np.exp(shifted).sum(-1, keepdims=True)))


def _exact_gradient(c: Case, w: np.ndarray) -> dict[str, Grad]:
    logp = _log_softmax(np.asarray(c.args[0], dtype=np.float64))
    logq = _log_softmax(np.asarray(c.args[1], dtype=np.float64))
    p = np.exp(logp)
    divergence = (p * (logp - logq)).sum(-1, keepdims=True)
    wv = np.asarray(w)[..., None]
    g = wv * p * ((logp - logq) - divergence)
    terms = np.abs(wv) * p * (np.abs(logp) + np.abs(logq) + divergence + 1.0)
    return {"logits": Grad(g, np.full(g.shape, np.nan), terms)}


# ----------------------------------------------------------------------------------------------------------------
# variants of the exact KL


def _exact_variants() -> list[Variant]:
    def reverse(c: Case) -> np.ndarray:
        z, zr = c.args
        return np.asarray(R.kl_exact(zr, z))

    def raw(c: Case) -> np.ndarray:
        z, zr = (np.asarray(a, dtype=np.float64) for a in c.args)
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return np.asarray(np.sum(p * (z - zr), -1))

    return [
        Variant("KL(pi_ref || pi)", "the reverse (forward-in-ref) KL: arguments exchanged", reverse),
        negated(R.kl_exact, "-KL"),
        Variant("unnormalised logits", "sum p (z - z_ref): logits used as log-probabilities", raw),
    ]


# ----------------------------------------------------------------------------------------------------------------
# the registry entries

KL_ESTIMATE = register(
    FormulaSpec(
        id="kl_estimate",
        reference=R.kl_estimate,
        torch_name="kl_estimate",
        strategy=_estimate_cases,
        tolerance=_tol_estimate,
        tolerance_note="elementwise; the scale is the size of the terms: |Delta| (k1), Delta^2 (k2), (1 + |Delta|)"
        "(1 + e^-Delta) for k3 = e^-Delta - 1 + Delta (terms of size 1 cancel near Delta = 0; exp amplifies the "
        "error of Delta).",
        differentiable=("logp",),
        gradient=_estimate_gradient,
        paper="Schulman 2020, Approximating KL Divergence (http://joschu.net/blog/kl-approx.html); DeepSeekMath",
        equation="k1/k2/k3; DeepSeekMath eq. 4",
        docs_page="kl-estimators",
        derivations=("kl_estimators_expectation", "kl_estimator_gradients"),
        conventions=("kind", "log_ratio_clamp"),
        variants=tuple(kl.variants()),
        exponentiates=True,
        stability=_estimate_extreme,
        stability_note="log-ratios to +-1e4: estimator values far beyond the +-10 output clamp of OpenRLHF and "
        "verl, and beyond exp's range in float32 (88.7) and float64 (709.8)",
        bad_hyper=(("kind", "k4"), ("log_ratio_clamp", -1.0)),
    )
)

KL_EXACT = register(
    FormulaSpec(
        id="kl_exact",
        reference=R.kl_exact,
        torch_name="kl_exact",
        strategy=_exact_cases,
        tolerance=_tol_exact,
        tolerance_note="sum_v p (log p - log q): log-softmax errors ~ eps * max|z| on both sides, reduced over V.",
        differentiable=("logits",),
        gradient=_exact_gradient,
        paper="definition of KL(pi || pi_ref)",
        equation="definition",
        docs_page="kl-estimators",
        derivations=("kl_estimators_expectation",),
        conventions=(),
        variants=tuple(_exact_variants()),
        stability=_exact_extreme,
        stability_note="logit offsets of 1e4 and spreads of 1e3-1e4",
    )
)
