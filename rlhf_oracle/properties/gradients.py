r"""Reference gradients, in NumPy float64, for the differentiable formulas.

For a formula :math:`f` with output :math:`y` and a fixed weight :math:`w` of the output's shape (1 for a scalar),
each function returns :math:`\partial \sum w\, y / \partial x` for every differentiable input :math:`x`, derived
by hand from the reference formula (and cross-checked against float64 finite differences of the reference in
``tests/properties/test_reference_gradients.py``). The PPO ones are built on ``reference.ppo_clip_grad``, whose
piecewise form is proved in :mod:`rlhf_oracle.derivations`.

Where the formula has a kink (a clip bound, a max of two branches), the derivative is one-sided there and
every convex combination of the two sides is a valid subgradient (``torch.minimum``/``torch.maximum`` split the
gradient 0.5/0.5 at a tie): such positions are returned in ``alternative`` with the other one-sided value (NaN
where there is no kink), and a candidate may return any point between the two. A position counts as a kink when it
sits on it up to the rounding of the candidate's dtype (:func:`kink_band`): a bf16 ``exp`` rounds onto
``1 + eps`` where float64 lands a hair away.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, NamedTuple

import numpy as np

from rlhf_oracle import reference as R

from .strategies import Case

__all__ = ["GRADIENTS", "Grad", "kink_band", "kink_rtol", "ppo_kinks", "weights_for"]

_KINK_RTOL: ContextVar[float] = ContextVar("kink_rtol", default=1e-6)


def kink_rtol() -> float:
    """Relative distance to a kink (clip bound, tie of two branches) within which both sides are accepted."""
    return _KINK_RTOL.get()


@contextlib.contextmanager
def kink_band(eps: float) -> Iterator[None]:
    """Within the block, a kink is any position within ``max(1e-6, 2 eps)`` (relative) of the bound: ``eps`` is
    the machine epsilon of the dtype the candidate computes in (one rounding of ``exp`` or of a difference, on
    either side). 1e-6 covers bf16-rounded inputs evaluated in float32."""
    token = _KINK_RTOL.set(max(1e-6, 2.0 * float(eps)))
    try:
        yield
    finally:
        _KINK_RTOL.reset(token)


class Grad(NamedTuple):
    """Expected gradient of one input, the other one-sided value at kinks (NaN elsewhere), and the magnitude of
    the terms that cancel in it (None: the gradient itself is the scale)."""

    value: np.ndarray
    alternative: np.ndarray
    scale: np.ndarray | None = None


def weights_for(shape: tuple[int, ...]) -> np.ndarray:
    """The fixed output weight w used for non-scalar outputs (deterministic, values in [-1, 1], no zeros)."""
    if shape == ():
        return np.asarray(1.0)
    rng = np.random.default_rng(12345)
    w = rng.uniform(0.25, 1.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    return np.asarray(w)


def _no_alt(g: np.ndarray) -> Grad:
    return Grad(np.asarray(g, dtype=np.float64), np.full(np.shape(g), np.nan))


def _f(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return np.asarray(e / e.sum(-1, keepdims=True))


def _agg_weights(m: np.ndarray, mode: str, max_tokens: int | None) -> np.ndarray:
    """d aggregate / d values: the weight of every token under ``mode``."""
    b, t = m.shape
    mf = m.astype(np.float64)
    with np.errstate(all="ignore"):
        if mode == "seq-mean-token-mean":
            return np.asarray(mf / (b * mf.sum(1, keepdims=True)))
        if mode == "token-mean":
            return np.asarray(mf / mf.sum())
        if mode == "seq-mean-token-sum":
            return np.asarray(mf / b)
        return np.asarray(mf / (b * (t if max_tokens is None else max_tokens)))


def ppo_kinks(c: Case) -> tuple[np.ndarray, np.ndarray]:
    """(gradient d objective / d logp, alternative at the clip kinks) on the valid inputs."""
    n = c.named()
    logp, old, adv = _f(n["logp"]), _f(n["logp_old"]), _f(n["advantages"])
    if c.mask is not None:
        logp, old, adv = (np.where(c.mask, a, 0.0) for a in (logp, old, adv))
    kw = {k: n[k] for k in ("clip_eps", "clip_eps_high", "dual_clip") if k in n}
    g = R.ppo_clip_grad(logp, old, adv, **kw)
    r = np.exp(logp - old)
    eps = float(kw.get("clip_eps", 0.2))
    high = eps if kw.get("clip_eps_high") is None else float(kw["clip_eps_high"])
    bounds = [1 - eps, 1 + high] + ([float(kw["dual_clip"])] if kw.get("dual_clip") is not None else [])
    # a kink where r sits on a bound up to the candidate's rounding of exp (kink_band)
    near = np.zeros(r.shape, dtype=bool)
    rtol = kink_rtol()
    for bound in bounds:
        near |= np.abs(r - bound) <= rtol * bound
    alt = np.where(near, np.where(g == 0, r * adv, 0.0), np.nan)
    return g, alt


def _ppo_clip_objective(c: Case, w: np.ndarray) -> dict[str, Grad]:
    g, alt = ppo_kinks(c)
    return {"logp": Grad(w * g, w * alt)}


def _policy_loss(c: Case, w: np.ndarray) -> dict[str, Grad]:
    assert c.mask is not None
    g, alt = ppo_kinks(c)
    weights = _agg_weights(c.mask, c.kwargs.get("agg", "seq-mean-token-mean"), c.kwargs.get("max_tokens"))
    value = np.where(c.mask, -weights * g, 0.0) * w
    return {"logp": Grad(value, np.where(c.mask, -weights * alt, np.nan) * w)}


def _aggregate(c: Case, w: np.ndarray) -> dict[str, Grad]:
    assert c.mask is not None
    weights = _agg_weights(c.mask, c.kwargs.get("mode", "seq-mean-token-mean"), c.kwargs.get("max_tokens"))
    return {"values": _no_alt(w * weights)}


def _ptx_loss(c: Case, w: np.ndarray) -> dict[str, Grad]:
    assert c.mask is not None
    weights = _agg_weights(c.mask, c.kwargs.get("agg", "token-mean"), None)
    return {"logp": _no_alt(-w * weights)}


def _token_logprobs(c: Case, w: np.ndarray) -> dict[str, Grad]:
    z, tokens = _f(c.args[0]), np.asarray(c.args[1])
    tau = float(c.kwargs.get("temperature", 1.0))
    p = _softmax(z / tau)
    onehot = np.zeros_like(z)
    np.put_along_axis(onehot, tokens[..., None], 1.0, axis=-1)
    g = w[..., None] * (onehot - p) / tau
    # onehot - p cancels two terms of size ~1 at the sampled token: 1 - p_chosen is 0 in float32 once p_chosen
    # rounds to 1 (a dominant token), so the scale is the size of the terms, not of the (tiny) result
    terms = np.abs(w[..., None]) * (onehot + p) / tau
    return {"logits": Grad(g, np.full(g.shape, np.nan), terms)}


def _entropy(c: Case, w: np.ndarray) -> dict[str, Grad]:
    z = _f(c.args[0])
    tau = float(c.kwargs.get("temperature", 1.0))
    zs = z / tau
    logp = zs - zs.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    p = np.exp(logp)
    h = -(p * logp).sum(-1, keepdims=True)
    wv = np.asarray(w)[..., None]
    g = wv * (-p * (logp + h)) / tau
    return {"logits": Grad(g, np.full(g.shape, np.nan), np.abs(wv) * p * (np.abs(logp) + h + 1.0) / tau)}


def _kl_estimate(c: Case, w: np.ndarray) -> dict[str, Grad]:
    delta = _f(c.args[0]) - _f(c.args[1])
    kind = c.kwargs.get("kind", "k1")
    clamp = c.kwargs.get("log_ratio_clamp")
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


def _kl_exact(c: Case, w: np.ndarray) -> dict[str, Grad]:
    z, zr = _f(c.args[0]), _f(c.args[1])
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    logq = zr - zr.max(-1, keepdims=True)
    logq = logq - np.log(np.exp(logq).sum(-1, keepdims=True))
    p = np.exp(logp)
    kl = (p * (logp - logq)).sum(-1, keepdims=True)
    wv = np.asarray(w)[..., None]
    g = wv * p * ((logp - logq) - kl)
    return {"logits": Grad(g, np.full(g.shape, np.nan), np.abs(wv) * p * (np.abs(logp) + np.abs(logq) + kl + 1.0))}


def _rlhf_objective(c: Case, w: np.ndarray) -> dict[str, Grad]:
    assert c.mask is not None
    n = c.named()
    b = c.mask.shape[0]
    return {"logp": _no_alt(np.where(c.mask, -float(n["beta"]) / b, 0.0) * w)}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.exp(-np.logaddexp(0.0, -x)))


def _reward_model_loss(c: Case, w: np.ndarray) -> dict[str, Grad]:
    n = c.named()
    ch, rj = _f(n["chosen"]), _f(n["rejected"])
    m = 0.0 if n.get("margin") is None else _f(n["margin"])
    d = ch - rj - m
    g = w * (_sigmoid(d) - 1.0) / ch.shape[0]  # d/dDelta -log sigmoid = sigmoid - 1 (derivations)
    terms = np.abs(w) * np.ones_like(d) / ch.shape[0]  # sigmoid(D) - 1 cancels terms of size 1 for D >> 0
    nan = np.full(d.shape, np.nan)
    return {"chosen": Grad(g, nan, terms), "rejected": Grad(-g, nan, terms)}


def _ranking_loss(c: Case, w: np.ndarray) -> dict[str, Grad]:
    r = _f(c.args[0])
    b, k = r.shape
    g = np.zeros_like(r)
    norm = math.comb(k, 2)
    for row in range(b):
        for i in range(k):
            for j in range(i + 1, k):
                s = float(_sigmoid(np.asarray(r[row, i] - r[row, j]))) - 1.0
                g[row, i] += s
                g[row, j] -= s
    terms = np.abs(w) * (k - 1) * np.ones_like(r) / (norm * b)  # each element sums K-1 terms sigmoid - 1
    return {"rewards": Grad(w * g / (norm * b), np.full(r.shape, np.nan), terms)}


def _value_loss(c: Case, w: np.ndarray) -> dict[str, Grad]:
    assert c.mask is not None
    n = c.named()
    m = c.mask
    v, old, ret = (np.where(m, _f(n[k]), 0.0) for k in ("values", "old_values", "returns"))
    eps = n.get("clip_eps", 0.2)
    weights = _agg_weights(m, n.get("agg", "token-mean"), n.get("max_tokens"))
    if eps is None:
        return {"values": _no_alt(w * weights * (v - ret))}
    change = v - old
    vc = old + np.clip(change, -eps, eps)
    unclipped, clipped = (v - ret) ** 2, (vc - ret) ** 2
    inside = np.abs(change) < eps
    g_unclipped = v - ret
    g_clipped = np.where(inside, vc - ret, 0.0)
    g = np.where(unclipped >= clipped, g_unclipped, g_clipped)
    # kinks up to the rounding of the candidate's dtype (kink_band, as in ppo_kinks): a candidate computing
    # V - V_old in float32 can land exactly on the clip bound (or on a tie of the two branches) where float64 is not
    rtol = kink_rtol()
    alt_clip = np.where(np.isclose(np.abs(change), eps, rtol=rtol, atol=0.0), np.where(inside, 0.0, vc - ret), np.nan)
    tie = np.isclose(unclipped, clipped, rtol=rtol, atol=1e-300)
    # at a tie of the two branches the alternative is the branch g did not take
    alt = np.where(
        tie, np.where(unclipped >= clipped, g_clipped, g_unclipped), np.where(unclipped < clipped, alt_clip, np.nan)
    )
    return {"values": Grad(w * weights * g, w * weights * alt)}


GRADIENTS: dict[str, Callable[[Case, np.ndarray], dict[str, Grad]]] = {
    "token_logprobs": _token_logprobs,
    "entropy_from_logits": _entropy,
    "ppo_clip_objective": _ppo_clip_objective,
    "aggregate": _aggregate,
    "policy_loss": _policy_loss,
    "kl_estimate": _kl_estimate,
    "kl_exact": _kl_exact,
    "rlhf_objective": _rlhf_objective,
    "ptx_loss": _ptx_loss,
    "reward_model_loss": _reward_model_loss,
    "ranking_loss": _ranking_loss,
    "value_loss": _value_loss,
}
"""Formula id -> ``gradient(case, w) -> {input name: Grad}`` for the differentiable formulas."""
