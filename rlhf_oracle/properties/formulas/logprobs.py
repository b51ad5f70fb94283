"""Log-probabilities and entropy of the LM policy: everything the oracle knows about ``token_logprobs`` and
``entropy_from_logits``.

- inputs: logits [B, T, V] (or [..., V]) moderate, near-tied (equal up to 1e-9) or with one dominant token, a
  temperature drawn; the extreme regime: offsets of 1e4 and spreads of 1e3-1e4 (softmax underflows to 0);
- the tolerance: log-softmax subtracts logsumexp(z/T), an error ~ eps * max|z|/T, reduced over V;
- the gradient: (onehot - p)/T and -p(log p + H)/T, with the size of the terms that cancel;
- the variants: temperature ignored or multiplied, the sign, probabilities instead of log-probabilities, the
  naive log(softmax) and -sum p log p.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rlhf_oracle import reference as R

from .. import tolerances as tol
from ..cases import Accepted, Case, Draw, Fixed, Params, extreme_logits, logits, shape_bt
from ..gradients import Grad, softmax
from ..registry import Conditioning, FormulaSpec, register
from ..variants import Variant, negated, with_kwargs

__all__ = ["ENTROPY", "TOKEN_LOGPROBS"]

# ----------------------------------------------------------------------------------------------------------------
# inputs


def _temperature(p: Params) -> None:
    p("temperature", st.sampled_from([1.0, 0.7, 1.3]))


@st.composite
def _token_logprobs_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = shape_bt(draw)
    v = draw(st.integers(2, 8))
    z = draw(logits((b, t, v)))
    tokens = draw(hnp.arrays(np.int64, (b, t), elements=st.integers(0, v - 1)))
    p = Params("token_logprobs", draw, fixed, accepted)
    _temperature(p)
    return Case("token_logprobs", (z, tokens), ("logits", "tokens"), p.finish())


@st.composite
def _entropy_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    lead = draw(st.sampled_from([(), (3,), (2, 3)]))
    shape = (*(draw(st.integers(1, n + 1)) for n in lead), draw(st.integers(1, 8)))
    z = draw(logits(shape))
    p = Params("entropy_from_logits", draw, fixed, accepted)
    _temperature(p)
    return Case("entropy_from_logits", (z,), ("logits",), p.finish())


def _extreme(c: Case, draw: Draw) -> Case:
    return extreme_logits(c, draw, "logits")


def _empty_vocabulary(c: Case, name: str) -> Case:
    """The entropy's rank is free: its wrong shape is an empty vocabulary axis."""
    return c.with_inputs(**{name: np.asarray(c.named()[name])[..., :0]})


# ----------------------------------------------------------------------------------------------------------------
# the maths: tolerance and gradients


def _tolerance(c: Case) -> Conditioning:
    z = tol.finite(c.args[0])
    return tol.sum_cond(z.shape[-1]), np.asarray(1.0 + np.max(np.abs(z), axis=-1) / float(c.arg("temperature")))


def _logprobs_gradient(c: Case, w: np.ndarray) -> dict[str, Grad]:
    z, tokens = np.asarray(c.args[0], dtype=np.float64), np.asarray(c.args[1])
    tau = float(c.arg("temperature"))
    p = softmax(z / tau)
    onehot = np.zeros_like(z)
    np.put_along_axis(onehot, tokens[..., None], 1.0, axis=-1)
    g = w[..., None] * (onehot - p) / tau
    # onehot - p cancels two terms of size ~1 at the sampled token: 1 - p_chosen is 0 in float32 once p_chosen
    # rounds to 1 (a dominant token), so the scale is the size of the terms, not of the (tiny) result
    terms = np.abs(w[..., None]) * (onehot + p) / tau
    return {"logits": Grad(g, np.full(g.shape, np.nan), terms)}


def _entropy_gradient(c: Case, w: np.ndarray) -> dict[str, Grad]:
    z = np.asarray(c.args[0], dtype=np.float64)
    tau = float(c.arg("temperature"))
    zs = z / tau
    logp = zs - zs.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    p = np.exp(logp)
    h = -(p * logp).sum(-1, keepdims=True)
    wv = np.asarray(w)[..., None]
    g = wv * (-p * (logp + h)) / tau
    return {"logits": Grad(g, np.full(g.shape, np.nan), np.abs(wv) * p * (np.abs(logp) + h + 1.0) / tau)}


# ----------------------------------------------------------------------------------------------------------------
# variants

_NAIVE_LOGPROBS = (
    "log of the softmax probabilities: softmax underflows to exactly 0 for tokens more than ~745 (float64) / ~104 "
    "(float32) nats below the best, and log(0) = -inf; use log_softmax or z - logsumexp(z)"
)
_NAIVE_ENTROPY = (
    "-sum p log p with p = softmax(z): p underflows to 0 for very unlikely tokens and 0 * log 0 = 0 * -inf = NaN; "
    "use logsumexp(z) - sum p z"
)


def _softmax_naive(z: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        e = np.exp(z - z.max(-1, keepdims=True))
        return np.asarray(e / e.sum(-1, keepdims=True))


def _naive_logprobs(c: Case) -> np.ndarray:
    z = np.asarray(c.args[0], dtype=np.float64) / float(c.arg("temperature"))
    tokens = np.asarray(c.args[1])
    with np.errstate(all="ignore"):
        p = np.take_along_axis(_softmax_naive(z), tokens[..., None], -1)[..., 0]
        return np.asarray(np.log(p))


def _naive_entropy(c: Case) -> np.ndarray:
    z = np.asarray(c.args[0], dtype=np.float64) / float(c.arg("temperature"))
    p = _softmax_naive(z)
    with np.errstate(all="ignore"):
        return np.asarray(-(p * np.log(p)).sum(-1))


def _temperature_variants(fn: Any, what: str) -> list[Variant]:
    def no_temp(c: Case) -> Any:
        return fn(*c.args, **with_kwargs(c, temperature=1.0))

    def times_temp(c: Case) -> Any:
        return fn(*c.args, **with_kwargs(c, temperature=1.0 / float(c.arg("temperature"))))

    return [
        Variant("temperature ignored", "logits not divided by the temperature", no_temp),
        Variant("logits multiplied by the temperature", "z * T instead of z / T", times_temp),
        negated(fn, f"minus the {what}"),
    ]


_LOGPROBS_VARIANTS = [
    *_temperature_variants(R.token_logprobs, "log-probability (the NLL)"),
    Variant("probabilities", "pi(o_t) instead of log pi(o_t)", lambda c: np.exp(R.token_logprobs(*c.args, **c.kwargs))),
    Variant("log(softmax(z)) computed naively", _NAIVE_LOGPROBS, _naive_logprobs),
]
_ENTROPY_VARIANTS = [
    *_temperature_variants(R.entropy_from_logits, "entropy"),
    Variant("-sum p log p computed naively", _NAIVE_ENTROPY, _naive_entropy),
]


# ----------------------------------------------------------------------------------------------------------------
# the registry entries

TOKEN_LOGPROBS = register(
    FormulaSpec(
        id="token_logprobs",
        reference=R.token_logprobs,
        torch_name="token_logprobs",
        strategy=_token_logprobs_cases,
        tolerance=_tolerance,
        tolerance_note="log-softmax subtracts logsumexp from z/T: absolute error ~ eps * max|z|/T (scale), plus a "
        "reduction over V (cond).",
        differentiable=("logits",),
        gradient=_logprobs_gradient,
        paper="Shao et al. 2024 (DeepSeekMath), LM form of PPO: state (q, o_<t), action o_t",
        equation="eq. 1",
        docs_page="from-rl-to-lm",
        derivations=(),
        conventions=("temperature",),
        variants=tuple(_LOGPROBS_VARIANTS),
        stability=_extreme,
        stability_note="logit offsets of 1e4 and spreads of 1e3-1e4: softmax underflows to exactly 0, a stable "
        "log-softmax does not",
        bad_hyper=(("temperature", 0.0), ("temperature", -1.0)),
    )
)

ENTROPY = register(
    FormulaSpec(
        id="entropy_from_logits",
        reference=R.entropy_from_logits,
        torch_name="entropy_from_logits",
        strategy=_entropy_cases,
        tolerance=_tolerance,
        tolerance_note="logsumexp(z) - sum p z cancels two terms of size max|z|/T: absolute error ~ eps * max|z|/T.",
        differentiable=("logits",),
        gradient=_entropy_gradient,
        paper="Schulman et al. 2017, entropy bonus S[pi](s_t)",
        equation="eq. 9",
        docs_page="from-rl-to-lm",
        derivations=(),
        conventions=("temperature",),
        variants=tuple(_ENTROPY_VARIANTS),
        stability=_extreme,
        stability_note="logit offsets of 1e4 and spreads of 1e3-1e4: p log p with p = 0 is NaN",
        bad_hyper=(("temperature", 0.0),),
        break_shape=_empty_vocabulary,
    )
)
