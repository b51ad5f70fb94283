"""The rollout importance-sampling weights: everything the oracle knows about ``rollout_is_weights`` (TIS, MIS,
IcePop, rejection sampling; token or sequence level, product or geometric mean).

- inputs: engine-vs-trainer log-ratios small (1e-3, the usual mismatch) and moderate, exactly at the bounds (per
  token, per sequence product, per geometric mean), empty rows and holes, long rows for the product;
- no gradient (the weights are data); the output jumps at the bounds in the mask and reject modes (the other
  one-sided value is accepted within the candidate's rounding);
- the variants: product vs geometric, truncate vs mask vs reject, token vs sequence, the ratio inverted, the lower
  bound ignored.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from rlhf_oracle import reference as R

from .. import tolerances as tol
from ..axes.ppo import CLAMP_GRID
from ..cases import (
    Accepted,
    Case,
    Draw,
    Fixed,
    Params,
    far_log_ratios,
    fill_padding,
    float_arrays,
    log_ratios,
    masks,
    shape_bt,
)
from ..gradients import kink_rtol
from ..registry import Conditioning, FormulaSpec, register
from ..variants import Fitted, Variant, unused

__all__ = ["ROLLOUT_IS_WEIGHTS"]

# ----------------------------------------------------------------------------------------------------------------
# rollout importance-sampling weights (TIS, MIS, IcePop, rejection sampling)

_IS_ARGS = ("logp_old", "logp_rollout")


@st.composite
def _is_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = shape_bt(draw, max_t=12)
    p = Params("rollout_is_weights", draw, fixed, accepted)
    level = p("level", st.sampled_from(R.IS_LEVELS))
    p("mode", st.sampled_from(R.IS_MODES))
    hi = float(p("upper", st.sampled_from([2.0, 3.0, 5.0])))
    lo = p("lower", st.sampled_from([None, 0.5, 0.0]))
    geometric = p("seq_ratio", st.sampled_from(R.SEQ_RATIOS)) == "geometric"
    m = draw(masks(b, t, min_valid=0))
    logp_old = draw(float_arrays((b, t), -20.0, 0.0))
    log_rho = draw(log_ratios((b, t)))
    if draw(st.booleans()):  # the engine's mismatch is usually small: |log rho| ~ 1e-3
        log_rho = log_rho * 1e-3
    edges = [math.log(hi)] + ([math.log(lo)] if lo else [])
    if draw(st.booleans()):  # exactly at a bound: per token, per product (one token), per geometric mean (all)
        edge = draw(st.sampled_from(edges))
        row = draw(st.integers(0, b - 1))
        if level == "token" or geometric:
            log_rho[row] = edge
        else:
            log_rho[row] = 0.0
            log_rho[row, int(np.argmax(m[row])) if m[row].any() else 0] = edge
    arrays = {"logp_old": logp_old, "logp_rollout": logp_old - log_rho}
    fill = fill_padding(draw, arrays, m)
    args = (arrays["logp_old"], arrays["logp_rollout"], m)
    return Case("rollout_is_weights", args, (*_IS_ARGS, "mask"), p.finish(), m, _IS_ARGS, fill)


def _is_log_rho(c: Case) -> np.ndarray:
    assert c.mask is not None
    old, rollout = tol.valid(c, "logp_old"), tol.valid(c, "logp_rollout")
    x = np.where(c.mask, old - rollout, 0.0)
    if c.arg("level") == "sequence":
        total = x.sum(axis=1, keepdims=True)
        if c.arg("seq_ratio") == "geometric":
            total = total / np.maximum(c.mask.sum(axis=1, keepdims=True), 1)
        x = np.where(c.mask, total, 0.0)
    return np.asarray(x)


def _is_tolerance(c: Case) -> Conditioning:
    x = _is_log_rho(c)
    size = np.exp(np.minimum(x, math.log(float(c.arg("upper"))))) * tol.exp_cond(x)
    return 1.0, size


def _is_jump(c: Case) -> np.ndarray:
    """The other one-sided value where log rho sits on a bound (up to the candidate's rounding): the mask and
    reject modes jump there; NaN elsewhere."""
    assert c.mask is not None
    x = _is_log_rho(c)
    mode, lo = c.arg("mode"), c.arg("lower")
    bounds = [math.log(float(c.arg("upper")))] + ([math.log(lo)] if lo else [])
    near = np.zeros(x.shape, dtype=bool)
    for bound in bounds:
        near |= np.abs(x - bound) <= kink_rtol() * (1.0 + abs(bound)) * (1.0 + np.abs(x))
    near &= c.mask
    with np.errstate(over="ignore"):
        inside = np.exp(x) if mode == "mask" else np.ones_like(x)
    if mode == "truncate":
        return np.full(x.shape, np.nan)
    current = np.asarray(R.rollout_is_weights(*c.args, **c.kwargs))
    return np.where(near, np.where(current == 0, inside, 0.0), np.nan)


def _is_variants() -> list[Variant]:
    def other(name: str, choices: tuple[str, ...], description: str) -> list[Variant]:
        out = []
        for value in choices:

            def compute(c: Case, value: str = value) -> np.ndarray:
                if c.arg(name) == value:
                    raise NotImplementedError
                return np.asarray(R.rollout_is_weights(*c.args, **{**c.kwargs, name: value}))

            out.append(Variant(f"{name}={value!r}", f"{description} ({name}={value!r})", compute, {name: value}))
        return out

    def inverted(c: Case) -> np.ndarray:
        old, rollout, m = c.args
        return np.asarray(R.rollout_is_weights(rollout, old, m, **c.kwargs))

    def no_lower(c: Case) -> np.ndarray:
        if c.arg("lower") is None:
            raise NotImplementedError
        return np.asarray(R.rollout_is_weights(*c.args, **{**c.kwargs, "lower": None}))

    def clamped(c: Case, bound: float) -> np.ndarray:  # log rho clamped to [-bound, bound] before exp
        assert c.mask is not None
        with np.errstate(over="ignore"):
            rho = np.exp(np.clip(_is_log_rho(c), -bound, bound))
        upper, lower, mode = float(c.arg("upper")), c.arg("lower"), c.arg("mode")
        inside = (rho <= upper) & (rho >= (lower if lower is not None else 0.0))
        w = {"truncate": np.minimum(rho, upper), "mask": np.where(inside, rho, 0.0),
             "reject": inside.astype(np.float64)}[mode]  # fmt: skip
        return np.asarray(np.where(c.mask, w, 0.0))

    return [
        Fitted("log-ratio clamp at {c}", "log rho clamped to [-{c}, {c}] before exp (verl's SAFETY_BOUND 20): far "
               "ratios saturate at e^{c}", unused, None, 1, clamped, lambda c, actual: CLAMP_GRID),
        *other("seq_ratio", R.SEQ_RATIOS, "product vs geometric mean of the token ratios"),
        *other("mode", R.IS_MODES, "truncate (TIS), mask (MIS/IcePop) or reject (RS)"),
        *other("level", R.IS_LEVELS, "one weight per token vs per sequence"),
        Variant("ratio inverted", "rho = mu / pi_old = exp(logp_rollout - logp_old)", inverted),
        Variant("lower bound ignored", "only the upper bound applied (a single value read as the cap)", no_lower,
                {"lower": None}),
    ]  # fmt: skip


ROLLOUT_IS_WEIGHTS = register(
    FormulaSpec(
        id="rollout_is_weights",
        reference=R.rollout_is_weights,
        torch_name="rollout_is_weights",
        strategy=_is_cases,
        tolerance=_is_tolerance,
        tolerance_note="per token the weight (at most the cap) with exp amplifying the rounding of log rho "
        "(exp_cond: a sequence product sums |o| log-ratios).",
        differentiable=(),
        gradient=None,
        paper="Yao et al. 2025 (TIS); Li 2025 (MIS, geometric RS); IcePop 2025",
        equation="TIS: min(rho, C); MIS: rho 1[rho in band]",
        docs_page="grpo-losses",
        derivations=(),
        conventions=("level", "mode", "upper", "lower", "seq_ratio"),
        variants=tuple(_is_variants()),
        per_token_output=True,
        value_alternative=_is_jump,
        exponentiates=True,
        stability=lambda c, draw: far_log_ratios(c, draw, "logp_old", "logp_rollout", very_far=True),
        stability_note="log-ratios to +-1e4: a sequence product far beyond float64 must still truncate or mask",
        bad_hyper=(("upper", 0.0), ("lower", -0.5), ("lower", 10.0), ("mode", "clip"), ("seq_ratio", "mean")),
        masked_output_note="a weight written at masked positions: multiplied into the loss, padding enters it",
    )
)
