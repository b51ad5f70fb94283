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
from ..axes import aggregation as agg
from ..axes import kl
from ..axes.composed import aggregate_like_variants
from ..cases import (
    Accepted,
    Case,
    Draw,
    Fixed,
    Params,
    extreme_logits,
    far_log_ratios,
    fill_padding,
    float_arrays,
    log_ratios,
    logits,
    masks,
    shape_bt,
)
from ..gradients import Grad, GradientVariant, kink_rtol
from ..registry import Conditioning, FormulaSpec, register
from ..variants import Variant, negated
from .policy import frozen_pg_case

__all__ = ["KL_ESTIMATE", "KL_EXACT", "KL_LOSS"]


# ----------------------------------------------------------------------------------------------------------------
# inputs


@st.composite
def _estimate_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    shape = draw(st.sampled_from([(draw(st.integers(1, 16)),), shape_bt(draw)]))
    p = Params("kl_estimate", draw, fixed, accepted)
    p("kind", st.sampled_from(kl.DRAW_ORDER))
    p("output_clamp", st.sampled_from([None, 10.0, 0.5]))
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
    far = far_log_ratios(c, draw, "logp_ref", "logp", very_far=True)
    if c.arg("kind") != "k3" or draw(st.booleans()):
        return far
    # half of the k3 cases stay within float64's exp (Delta >= -700): where one token overflows, the reference
    # refuses the whole array, and what the candidate does on the other far tokens would go unchecked
    ref = np.asarray(far.named()["logp_ref"], dtype=np.float64)
    return far.with_inputs(logp=np.maximum(np.asarray(far.named()["logp"], dtype=np.float64), ref - 700.0))


def _exact_extreme(c: Case, draw: Draw) -> Case:
    return extreme_logits(c, draw, "logits", "logits_ref")


# ----------------------------------------------------------------------------------------------------------------
# the maths: tolerances and gradients


def _tol_estimate(c: Case) -> Conditioning:
    return 1.0, kl.scale(c, tol.finite(c.args[0]), tol.finite(c.args[1]))


def _tol_exact(c: Case) -> Conditioning:
    z, zr = tol.finite(c.args[0]), tol.finite(c.args[1])
    return tol.sum_cond(z.shape[-1]), 1.0 + np.max(np.abs(z), -1) + np.max(np.abs(zr), -1)


def estimator_slope(c: Case, delta: np.ndarray, kind: str) -> Grad:
    """d estimate / d logp of ``kind`` on the case's clamps (its ``log_ratio_clamp`` and ``output_clamp``): 0
    where a clamp is active, both one-sided values on a bound (and at Delta = 0 for abs)."""
    clamp = c.arg("log_ratio_clamp")
    d = np.clip(delta, -clamp, clamp) if clamp is not None else delta
    slope = kl.slope(kind, d)
    alt = np.full(d.shape, np.nan)
    if kind == "abs":  # a kink at Delta = 0: within rounding of the inputs, either side
        at_zero = np.abs(d) <= kink_rtol() * np.maximum(1.0, np.abs(delta + np.asarray(c.named()["logp_ref"])))
        slope, alt = np.where(at_zero, 1.0, slope), np.where(at_zero, -1.0, alt)
    if clamp is not None:
        slope = np.where(np.abs(delta) > clamp, 0.0, slope)
        alt = np.where(np.abs(delta) == clamp, 0.0, alt)
    out = c.arg("output_clamp", absent=None)
    if out is not None:
        k = np.abs(kl.estimator(kind, d))
        alt = np.where(k == out, 0.0, alt)
        slope = np.where(k > out, 0.0, slope)
    with np.errstate(over="ignore"):
        terms = 1.0 + np.abs(d) + np.exp(np.minimum(-d, 700.0))  # 1 - e^-d cancels near d = 0
    return Grad(slope, alt, terms)


def _estimate_gradient(c: Case, w: np.ndarray) -> dict[str, Grad]:
    delta = np.asarray(c.args[0], dtype=np.float64) - np.asarray(c.args[1], dtype=np.float64)
    g = estimator_slope(c, delta, c.arg("kind"))
    return {"logp": Grad(w * g.value, w * g.alternative, np.abs(w) * g.scale)}


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
        conventions=("kind", "log_ratio_clamp", "output_clamp"),
        variants=tuple(kl.variants()),
        exponentiates=True,
        stability=_estimate_extreme,
        stability_note="log-ratios to +-1e4: estimator values far beyond the +-10 output clamp of OpenRLHF and "
        "verl, and beyond exp's range in float32 (88.7) and float64 (709.8)",
        bad_hyper=(("kind", "k4"), ("log_ratio_clamp", -1.0), ("output_clamp", 0.0)),
    )
)

# ----------------------------------------------------------------------------------------------------------------
# the KL penalty as a loss term


@st.composite
def _loss_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = shape_bt(draw)
    p = Params("kl_loss", draw, fixed, accepted)
    p("kind", st.sampled_from(kl.DRAW_ORDER))
    p("grad", st.sampled_from(R.KL_GRADIENTS))
    p("log_ratio_clamp", st.sampled_from([None, 20.0, 1.0]))
    p("output_clamp", st.sampled_from([None, 10.0, 0.5]))
    agg.draw_mode(p, t)
    m = draw(masks(b, t, min_valid=1))
    logp_ref = draw(float_arrays((b, t), -20.0, 0.0))
    arrays = {"logp": logp_ref + draw(log_ratios((b, t), limit=2.0)), "logp_ref": logp_ref}
    shift = p("logp_old", st.one_of(st.none(), log_ratios((b, t), limit=0.5)))  # drawn as logp - logp_old
    if shift is not None:
        arrays["logp_old"] = arrays["logp"] - shift
    fill = fill_padding(draw, arrays, m)
    kwargs = p.finish()
    if "logp_old" in arrays:
        kwargs["logp_old"] = arrays["logp_old"]
    return Case("kl_loss", (arrays["logp"], arrays["logp_ref"], m), ("logp", "logp_ref", "mask"), kwargs, m,
                tuple(arrays), fill)  # fmt: skip


def _loss_extreme(c: Case, draw: Draw) -> Case:
    return far_log_ratios(c, draw, "logp", "logp_ref", very_far=True)


def _ratio(c: Case) -> np.ndarray:
    """exp(logp - logp_old) at the valid positions (1 without ``logp_old``)."""
    logp = tol.valid(c, "logp")
    if c.arg("logp_old") is None:
        return np.ones_like(logp)
    with np.errstate(over="ignore"):
        return np.asarray(np.exp(logp - tol.valid(c, "logp_old")))


def _term(
    c: Case, *, kind: str | None = None, flip: bool = False, ratio: bool = True, out: object = "case",
    inp: object = "case",
) -> np.ndarray:  # fmt: skip
    """The per-token loss term rho k(Delta) at the valid positions (0 elsewhere), with the case's conventions or
    the ones given (``out``/``inp``: the output / log-ratio clamp, ``None`` for none)."""
    assert c.mask is not None
    d = tol.valid(c, "logp") - tol.valid(c, "logp_ref")
    d = -d if flip else d
    in_bound = c.arg("log_ratio_clamp") if inp == "case" else inp
    if in_bound is not None:
        d = np.clip(d, -float(in_bound), float(in_bound))  # type: ignore[arg-type]
    k = kl.estimator(kind or c.arg("kind"), d)
    out_bound = c.arg("output_clamp") if out == "case" else out
    if out_bound is not None:
        k = np.clip(k, -float(out_bound), float(out_bound))  # type: ignore[arg-type]
    with np.errstate(all="ignore"):
        return np.asarray(np.where(c.mask, k * (_ratio(c) if ratio else 1.0), 0.0))


def _loss_tolerance(c: Case) -> Conditioning:
    assert c.mask is not None
    logp = tol.valid(c, "logp")
    size = kl.scale(c, logp, tol.valid(c, "logp_ref"))
    if c.arg("logp_old") is not None:
        d_old = logp - tol.valid(c, "logp_old")
        size = (size + np.abs(_term(c, ratio=False)) * (1.0 + np.abs(d_old))) * _ratio(c) * tol.exp_cond(d_old)
    return tol.sum_cond(c.mask.size), agg.abs_scale(c, size)


def _loss_slope(c: Case, *, grad: str | None = None, ratio_grad: bool = True) -> Grad:
    """d term / d logp per token: the estimator's (or k2's: Delta) slope, plus k where the ratio is
    differentiated, times the ratio; not yet weighted by the aggregation."""
    delta = tol.valid(c, "logp") - tol.valid(c, "logp_ref")
    if (grad or c.arg("grad")) == "k2":
        g = Grad(delta, np.full(delta.shape, np.nan), 1.0 + np.abs(delta))
    else:
        g = estimator_slope(c, delta, c.arg("kind"))
    if c.arg("logp_old") is None:
        return g
    r = _ratio(c)
    k = _term(c, ratio=False) if ratio_grad else 0.0
    scale = None if g.scale is None else (g.scale + np.abs(k)) * r
    return Grad((g.value + k) * r, (g.alternative + k) * r, scale)


def _loss_gradient(c: Case, w: np.ndarray) -> dict[str, Grad]:
    g = _loss_slope(c)
    aw = agg.case_weights(c) * w
    with np.errstate(invalid="ignore"):
        return {"logp": Grad(aw * g.value, aw * g.alternative, None if g.scale is None else np.abs(aw) * g.scale)}


def _loss_gradient_of(c: Case) -> Case:
    """The value the gradient differentiates: the case itself for the estimator's own gradient; for the
    straight-through k2 gradient, ``pg_loss`` with the per-token slope frozen as its weights (A = -1)."""
    if c.arg("grad") != "k2":
        return c
    return frozen_pg_case(c, _loss_slope(c).value, -np.ones_like(tol.valid(c, "logp")))


def _loss_variants() -> list[Variant]:
    def loss(**options: object):  # type: ignore[no-untyped-def]
        def compute(c: Case) -> float:
            assert c.mask is not None
            return agg.value(_term(c, **options), c.mask, *agg.settings(c))  # type: ignore[arg-type]

        return compute

    def unless(name: str, value: object, compute):  # type: ignore[no-untyped-def]
        def checked(c: Case) -> float:
            current = c.arg(name)  # (logp_old is an array: compared with None by identity only)
            same = current is value if value is None or current is None else bool(current == value)
            if same:
                raise NotImplementedError  # the variant is the reference on this case
            return float(compute(c))

        return checked

    out: list[Variant] = []
    for kind in kl.KINDS:
        out.append(Variant(f"kind={kind!r}", f"the {kind} estimator", unless("kind", kind, loss(kind=kind)),
                           {"kind": kind}))  # fmt: skip
    out += [
        Variant("log-ratio flipped", "the estimator of logp_ref - logp (KL sign flipped)", loss(flip=True)),
        Variant("ratio missing", "logp_old ignored: the estimate not multiplied by pi/pi_old (TRL's "
                "use_bias_correction_kl=False)", unless("logp_old", None, loss(ratio=False)), {"logp_old": None}),
        Variant("output clamp at 10", "the estimate clamped to [-10, 10] (OpenRLHF compute_approx_kl, verl "
                "low_var_kl)", unless("output_clamp", 10.0, loss(out=10.0)), {"output_clamp": 10.0}),
        Variant("output_clamp ignored", "the estimate not clamped to [-output_clamp, output_clamp]",
                unless("output_clamp", None, loss(out=None)), {"output_clamp": None}),
        Variant("log-ratio clamp at 20", "the log-ratio clamped to [-20, 20] before the estimator (verl, "
                "OpenRLHF)", unless("log_ratio_clamp", 20.0, loss(inp=20.0)), {"log_ratio_clamp": 20.0}),
        Variant("log_ratio_clamp ignored", "the log-ratio not clamped before the estimator",
                unless("log_ratio_clamp", None, loss(inp=None)), {"log_ratio_clamp": None}),
        *aggregate_like_variants("agg", _term),
    ]  # fmt: skip
    return out


def _gradient_variants() -> list[GradientVariant]:
    def other_grad(c: Case, w: np.ndarray) -> dict[str, np.ndarray]:
        g = _loss_slope(c, grad="estimator" if c.arg("grad") == "k2" else "k2")
        return {"logp": agg.case_weights(c) * w * g.value}

    def detached(c: Case, w: np.ndarray) -> dict[str, np.ndarray]:
        if c.arg("logp_old") is None:
            raise NotImplementedError
        return {"logp": agg.case_weights(c) * w * _loss_slope(c, ratio_grad=False).value}

    return [
        GradientVariant("the other gradient", "grad='k2' where the estimator's own gradient is meant (verl's '+' "
                        "kinds, straight-through) or the reverse", other_grad),
        GradientVariant("the ratio detached", "pi/pi_old multiplied in as sg(ratio): the KL term's gradient loses "
                        "k grad log pi (TRL's use_bias_correction_kl differentiates the ratio)", detached),
    ]  # fmt: skip


KL_LOSS = register(
    FormulaSpec(
        id="kl_loss",
        reference=R.kl_loss,
        torch_name="kl_loss",
        strategy=_loss_cases,
        tolerance=_loss_tolerance,
        tolerance_note="the estimator's terms (as kl_estimate), plus |k| (1 + |log r|) amplified by exp when the "
        "ratio to logp_old multiplies them, aggregated like the loss.",
        differentiable=("logp",),
        gradient=_loss_gradient,
        gradient_of=_loss_gradient_of,
        paper="DeepSeekMath (Shao et al. 2024) eq. 3-4; Schulman 2020; DeepSeek-V3.2 (2025)",
        equation="DeepSeekMath eq. 4 (k3 in the loss)",
        docs_page="kl-estimators",
        derivations=("kl_estimator_gradients", "kl_loss_ratio_corrected"),
        conventions=("kind", "grad", "log_ratio_clamp", "output_clamp", "agg", "max_tokens"),
        variants=tuple(_loss_variants()),
        gradient_variants=tuple(_gradient_variants()),
        exponentiates=True,
        stability=_loss_extreme,
        stability_note="log-ratios to the reference up to +-1e4: estimator values far beyond the +-10 output clamp "
        "of OpenRLHF and verl, and beyond exp's range",
        bad_hyper=(("kind", "k4"), ("grad", "k3"), ("output_clamp", 0.0), ("agg", "sum")),
        bad_input=agg.empty_row,
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
