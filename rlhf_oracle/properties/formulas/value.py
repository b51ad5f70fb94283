"""The critic's loss: everything the oracle knows about ``value_loss`` (PPO's clipped value loss, as OpenAI
baselines PPO2 and the RLHF frameworks write it).

- inputs: old values, small (|V - V_old| < 0.1) and large changes, returns near the old values; clip_eps 0.2,
  0.5 or None (unclipped) when the candidate's signature allows None; the token aggregations;
- the tolerance: squared errors of differences of size |V| + |V_old| + |R| (+ eps), aggregated;
- the gradient: the branch of the max that is active, zero where the clip binds, both sides at a tie and on the
  clip bound (up to the rounding of the candidate's dtype);
- the variants: min instead of max, no clip, no 1/2, the clipped term alone, and the aggregation alternatives.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from rlhf_oracle import reference as R

from .. import tolerances as tol
from ..axes import aggregation as agg
from ..axes.composed import N_ALTERNATIVES, Composed, axes_of
from ..cases import Accepted, Case, Draw, Fixed, Params, advantages_like, fill_padding, float_arrays, masks, shape_bt
from ..gradients import Grad, kink_rtol, no_alt
from ..registry import Conditioning, FormulaSpec, register
from ..variants import Variant

__all__ = ["VALUE_LOSS"]

_ARGS = ("values", "old_values", "returns")


@st.composite
def _cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = shape_bt(draw)
    p = Params("value_loss", draw, fixed, accepted)
    p("clip_eps", st.sampled_from([0.2, 0.5, None]))
    agg.draw_mode(p, t)
    m = draw(masks(b, t, min_valid=1))
    if not m.any():
        m[0, 0] = True
    old = draw(advantages_like((b, t)))
    change = draw(st.one_of(float_arrays((b, t), -0.1, 0.1), float_arrays((b, t), -2.0, 2.0)))
    returns = old + draw(float_arrays((b, t), -2.0, 2.0))
    arrays = {"values": old + change, "old_values": old, "returns": returns}
    fill = fill_padding(draw, arrays, m)
    args = (arrays["values"], arrays["old_values"], arrays["returns"], m)
    return Case("value_loss", args, (*_ARGS, "mask"), p.finish(), m, _ARGS, fill)


def _tolerance(c: Case) -> Conditioning:
    assert c.mask is not None
    eps = c.arg("clip_eps") or 0.0
    size = sum(np.abs(tol.valid(c, k)) for k in _ARGS) + eps
    return tol.sum_cond(c.mask.size), agg.abs_scale(c, size**2)


def _gradient(c: Case, w: np.ndarray) -> dict[str, Grad]:
    assert c.mask is not None
    n = c.named()
    m = c.mask
    v, old, ret = (np.where(m, np.asarray(n[k], dtype=np.float64), 0.0) for k in _ARGS)
    eps = c.arg("clip_eps")
    weights = agg.weights(m, *agg.settings(c))
    if eps is None:
        return {"values": no_alt(w * weights * (v - ret))}
    change = v - old
    vc = old + np.clip(change, -eps, eps)
    unclipped, clipped = (v - ret) ** 2, (vc - ret) ** 2
    inside = np.abs(change) < eps
    g_unclipped = v - ret
    g_clipped = np.where(inside, vc - ret, 0.0)
    g = np.where(unclipped >= clipped, g_unclipped, g_clipped)
    # kinks up to the rounding of the candidate's dtype (kink_band, as in the PPO clip): a candidate computing
    # V - V_old in float32 can land exactly on the clip bound (or on a tie of the two branches) where float64 is not
    rtol = kink_rtol()
    alt_clip = np.where(np.isclose(np.abs(change), eps, rtol=rtol, atol=0.0), np.where(inside, 0.0, vc - ret), np.nan)
    tie = np.isclose(unclipped, clipped, rtol=rtol, atol=1e-300)
    # at a tie of the two branches the alternative is the branch g did not take
    alt = np.where(
        tie, np.where(unclipped >= clipped, g_clipped, g_unclipped), np.where(unclipped < clipped, alt_clip, np.nan)
    )
    return {"values": Grad(w * weights * g, w * weights * alt)}


def _per_token(c: Case, variant: str) -> np.ndarray:
    n = c.named()
    v, old, ret = (np.asarray(n[k], dtype=np.float64) for k in _ARGS)
    eps = c.arg("clip_eps")
    with np.errstate(all="ignore"):
        unclipped = (v - ret) ** 2
        if eps is None or variant == "no value clip":
            return np.asarray(0.5 * unclipped)
        clipped = (old + np.clip(v - old, -eps, eps) - ret) ** 2
        if variant == "min instead of max":
            return np.asarray(0.5 * np.minimum(unclipped, clipped))
        if variant == "no 1/2 factor":
            return np.asarray(np.maximum(unclipped, clipped))
        if variant == "clipped term only":
            return np.asarray(0.5 * clipped)
        return np.asarray(0.5 * np.maximum(unclipped, clipped))


_AXIS = {
    "min instead of max": "1/2 min(...) of the clipped and unclipped errors: optimistic, the clip never binds "
    "(openai/baselines #765, ray #19291)",
    "no value clip": "1/2 (V - R)^2 without clipping (clip_eps=None)",
    "no 1/2 factor": "max(...) without the factor 1/2",
    "clipped term only": "1/2 (V_old + clip(V - V_old) - R)^2 alone",
}


def _variants() -> list[Variant]:
    out: list[Variant] = []
    for variant, description in _AXIS.items():

        def compute(c: Case, variant: str = variant) -> float:
            m = np.asarray(c.named()["mask"], dtype=bool)
            return agg.value(_per_token(c, variant), m, *agg.settings(c))

        kwargs = {"clip_eps": None} if variant == "no value clip" else None
        out.append(Variant(variant, description, compute, kwargs))
    alternatives = axes_of("agg")
    for agg_index in range(N_ALTERNATIVES):

        def compute_agg(c: Case, agg_index: int = agg_index) -> float:
            m = np.asarray(c.named()["mask"], dtype=bool)
            return alternatives(c)[agg_index].fn(_per_token(c, "reference"), m, *agg.settings(c))

        out.append(Composed("", "", compute_agg, None, 1, None, agg_index, 1.0, alternatives))
    return out


VALUE_LOSS = register(
    FormulaSpec(
        id="value_loss",
        reference=R.value_loss,
        torch_name="value_loss",
        strategy=_cases,
        tolerance=_tolerance,
        tolerance_note="squared errors of differences of size |V| + |V_old| + |R| (+ eps): scale is their square, "
        "aggregated.",
        differentiable=("values",),
        gradient=_gradient,
        paper="PPO value clipping (OpenAI baselines PPO2; Huang et al. 2022, 37 implementation details, #9)",
        equation="Schulman et al. 2017 eq. 9 (unclipped form)",
        docs_page="advantages",
        derivations=(),
        conventions=("clip_eps", "agg", "max_tokens"),
        variants=tuple(_variants()),
        bad_hyper=(("clip_eps", 0.0), ("clip_eps", -0.5), ("agg", "mean")),
    )
)
