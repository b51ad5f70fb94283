"""The policy losses of GRPO-era trainers beyond PPO-Clip: everything the oracle knows about ``cispo_loss``,
``sapo_loss`` and ``gspo_loss``.

- inputs: log-ratios at the PPO bounds, tiny and moderate (the PPO axis), far beyond the clamps (stability); for
  GSPO also log-ratios of the size of its clip band (1e-4) and advantages constant per sequence (GSPO proper) or
  per token (GSPO-token); masks with holes; the four aggregations; the bounds of each framework (CISPO: the
  ScaleRL cap 5, verl's [0.8, 1.2], TRL's cap without a lower bound; SAPO: the papers' temperatures and others);
- the gradients, where an ``sg()`` sits in the term: CISPO's ``-clip(r) A`` that never vanishes, GSPO-token's
  ``-s_b A`` where the unclipped branch is active (a kink at the bounds, per sequence), SAPO's
  ``-4 sigma (1 - sigma) r A``; the finite-difference test reads CISPO and GSPO as ``pg_loss`` with the weights
  frozen (``gradient_of``);
- the variants: relative vs absolute bounds and a missing lower bound, the IS weight unclipped or missing (CISPO);
  the temperatures swapped or one temperature, no 4/tau, the gate on log r (SAPO); product vs geometric mean,
  the token ratio of PPO, the padded length in the mean, verl's clamp at 10 (GSPO); the aggregation alternatives.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from hypothesis import strategies as st

from rlhf_oracle import reference as R

from .. import tolerances as tol
from ..axes import aggregation as agg
from ..axes import ppo
from ..axes.composed import aggregate_like_variants
from ..cases import (
    Accepted,
    Case,
    Draw,
    Fixed,
    Params,
    fill_padding,
    masks,
    shape_bt,
)
from ..gradients import Grad, GradientVariant, kink_rtol, no_alt
from ..registry import Conditioning, FormulaSpec, register
from ..variants import Fitted, Variant, unused
from .policy import frozen_pg_case

__all__ = ["CISPO_LOSS", "GSPO_LOSS", "SAPO_LOSS"]

_ARGS = ("logp", "logp_old", "advantages")

# ----------------------------------------------------------------------------------------------------------------
# shared: inputs, the ratio, the aggregation weights


def _token_cases(formula: str, hyper: Callable[[Params], list[float]], small: bool = False) -> Callable[..., object]:
    """Cases of a token-level loss; ``hyper`` draws its hyper-parameters and returns the ratios where its
    conventions differ (its bounds, just inside and outside them), which some tokens are set to."""

    @st.composite
    def cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
        b, t = shape_bt(draw)
        p = Params(formula, draw, fixed, accepted)
        edges = [r for r in hyper(p) if r > 0]
        mode = agg.draw_mode(p, t)
        m = draw(masks(b, t, min_valid=1))
        if mode == "token-mean" and not m.any():
            m[0, 0] = True
        logp, logp_old, adv = ppo.arrays(draw, (b, t))
        if edges and draw(st.booleans()):  # ratios exactly at, just inside and beyond the formula's bounds
            ratios = [x * f for x in edges for f in (1.0, 0.97, 1.03, 3.0)]
            picks = draw(st.lists(st.sampled_from(ratios), min_size=b * t, max_size=b * t))
            keep = draw(st.lists(st.booleans(), min_size=b * t, max_size=b * t))
            at = np.log(np.asarray(picks, dtype=np.float64).reshape(b, t))
            logp = np.where(np.asarray(keep).reshape(b, t), logp, logp_old + at)
        if small and draw(st.booleans()):  # log-ratios of the size of GSPO's clip band (3e-4)
            logp = logp_old + (logp - logp_old) * 1e-3
        if draw(st.booleans()):  # one advantage per sequence (outcome rewards: GRPO, GSPO proper)
            adv = np.repeat(adv[:, :1], t, axis=1)
        arrays = {"logp": logp, "logp_old": logp_old, "advantages": adv}
        fill = fill_padding(draw, arrays, m)
        args = (arrays["logp"], arrays["logp_old"], arrays["advantages"], m)
        return Case(formula, args, (*_ARGS, "mask"), p.finish(), m, _ARGS, fill)

    return cases


def _valid(c: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tol.valid(c, "logp"), tol.valid(c, "logp_old"), tol.valid(c, "advantages")


def _ratio(c: Case) -> np.ndarray:
    logp, old, _ = _valid(c)
    with np.errstate(over="ignore"):
        return np.asarray(np.exp(logp - old))


def _as_pg(c: Case, weights: np.ndarray) -> Case:
    """The ``pg_loss`` case whose value has this loss's gradient on ``logp``: the same log-probabilities,
    advantages, mask and aggregation, with the (detached) per-token weights frozen."""
    return frozen_pg_case(c, weights, _valid(c)[2])


def _clamp_variants(per_token: Callable[[Case, float], np.ndarray], what: str) -> list[Variant]:
    """A log-ratio clamp at a fitted bound c (verl clamps at +-20 before exp, 10 from above for GSPO), alone and
    with verl's +1e-8 token-count guard: ``per_token(case, c)`` is the term with the clamp applied."""

    def guarded(c: Case, bound: float) -> float:
        assert c.mask is not None
        guard = next(a for a in agg.alternatives(str(c.arg("agg")), "agg") if a.name.startswith("+1e-8"))
        return -guard.fn(np.where(c.mask, per_token(c, bound), 0.0), c.mask, *agg.settings(c))

    def plain(c: Case, bound: float) -> float:
        assert c.mask is not None
        return -agg.value(np.where(c.mask, per_token(c, bound), 0.0), c.mask, *agg.settings(c))

    def grid(c: Case, actual: list[np.ndarray]) -> list[float]:
        return ppo.CLAMP_GRID

    text = f"{what} clamped to [-{{c}}, {{c}}] before exp (verl: 20): far from the old policy the ratio saturates"
    return [
        Fitted("log-ratio clamp at {c}", text, unused, None, 1, plain, grid),
        Fitted("log-ratio clamp at {c} and +1e-8 in the token count", text + "; token counts guarded with "
               "+ 1e-8 (verl agg_loss)", unused, None, 2, guarded, grid),
    ]  # fmt: skip


def _loss(per_token: Callable[[Case], np.ndarray]) -> Callable[[Case], float]:
    """-agg(per_token(case)) under the case's own aggregation."""

    def compute(c: Case) -> float:
        assert c.mask is not None
        return -agg.value(np.where(c.mask, per_token(c), 0.0), c.mask, *agg.settings(c))

    return compute


def _agg_variants(per_token: Callable[[Case], np.ndarray]) -> list[Variant]:
    def loss_term(c: Case) -> np.ndarray:
        assert c.mask is not None
        return np.asarray(-np.where(c.mask, per_token(c), 0.0))

    return aggregate_like_variants("agg", loss_term)


# ----------------------------------------------------------------------------------------------------------------
# CISPO


def _cispo_hyper(p: Params) -> list[float]:
    hi = float(p("weight_max", st.sampled_from([5.0, 1.2, 2.0])))
    lo = p("weight_min", st.sampled_from([None, 0.8, 0.0]).filter(lambda lo: lo is None or lo < hi))
    return [hi, 1.0 + hi, 1.0 - (hi - 1.0), *([] if lo is None else [float(lo), 1.0 - (1.0 - lo)])]


def _cispo_weight(c: Case, *, lo: float | str | None = "case", hi: float | None = None) -> np.ndarray:
    low = c.arg("weight_min") if lo == "case" else lo
    high = float(c.arg("weight_max")) if hi is None else hi
    return np.asarray(np.clip(_ratio(c), low, high))


def _cispo_tolerance(c: Case) -> Conditioning:
    assert c.mask is not None
    logp, old, adv = _valid(c)
    size = _cispo_weight(c) * np.abs(adv) * (1.0 + np.abs(logp)) * tol.exp_cond(logp - old)
    return tol.sum_cond(c.mask.size), agg.abs_scale(c, size)


def _cispo_gradient(c: Case, w: np.ndarray) -> dict[str, Grad]:
    return {"logp": no_alt(-agg.case_weights(c) * _cispo_weight(c) * _valid(c)[2] * w)}


def _cispo_per_token(weight: Callable[[Case], np.ndarray]) -> Callable[[Case], np.ndarray]:
    def per_token(c: Case) -> np.ndarray:
        logp, _, adv = _valid(c)
        return np.asarray(weight(c) * adv * logp)

    return per_token


def _cispo_clamped(c: Case, bound: float) -> np.ndarray:
    logp, old, adv = _valid(c)
    r = np.exp(np.clip(logp - old, -bound, bound))
    return np.asarray(np.clip(r, c.arg("weight_min"), float(c.arg("weight_max"))) * adv * logp)


def _cispo_variants() -> list[Variant]:
    def no_lower(c: Case) -> float:
        if c.arg("weight_min") is None:
            raise NotImplementedError
        return _loss(_cispo_per_token(lambda cs: _cispo_weight(cs, lo=None)))(c)

    def relative(c: Case) -> float:  # the cap read as an epsilon: 1 + weight_max
        return _loss(_cispo_per_token(lambda cs: _cispo_weight(cs, hi=1.0 + float(cs.arg("weight_max")))))(c)

    return [
        Variant("no lower bound", "clip(r, max=weight_max): weight_min ignored (TRL's cap only)", no_lower),
        Variant(
            "bound read as an epsilon",
            "the weights clipped at 1 + weight_max: a relative bound (verl's 1 + clip_ratio_high) where an absolute "
            "cap is meant (TRL's epsilon_high), or the reverse",
            relative,
        ),
        Variant(
            "weight not clipped", "sg(r) A log pi: the importance weight unclipped", _loss(_cispo_per_token(_ratio))
        ),
        Variant(
            "no importance weight",
            "A log pi: plain REINFORCE without the IS weight",
            _loss(_cispo_per_token(lambda cs: np.ones_like(_ratio(cs)))),
        ),
        *_agg_variants(_cispo_per_token(_cispo_weight)),
        *_clamp_variants(_cispo_clamped, "the log-ratio of the IS weight"),
    ]


CISPO_LOSS = register(
    FormulaSpec(
        id="cispo_loss",
        reference=R.cispo_loss,
        torch_name="cispo_loss",
        strategy=_token_cases("cispo_loss", _cispo_hyper),  # type: ignore[arg-type]
        tolerance=_cispo_tolerance,
        tolerance_note="per-token clip(r) |A| (1 + |log pi|), r amplified by exp (exp_cond), aggregated like the loss.",
        differentiable=("logp",),
        gradient=_cispo_gradient,
        gradient_of=lambda c: _as_pg(c, _cispo_weight(c)),
        paper="MiniMax 2025 (MiniMax-M1, CISPO); Khatri et al. 2025 (ScaleRL) cap 5",
        equation="MiniMax-M1 §3",
        docs_page="grpo-losses",
        derivations=("cispo_gradient",),
        conventions=("weight_max", "weight_min", "agg", "max_tokens"),
        variants=tuple(_cispo_variants()),
        exponentiates=True,
        stability=ppo.extreme,
        stability_note="log-ratios to +-50: the weight stays at its cap (verl clamps the log-ratio at +-20 first)",
        bad_hyper=(("weight_max", 0.0), ("weight_min", -0.1), ("weight_min", 10.0), ("agg", "sum")),
        bad_input=agg.empty_row,
    )
)

# ----------------------------------------------------------------------------------------------------------------
# SAPO


def _sapo_hyper(p: Params) -> list[float]:
    p("tau_pos", st.sampled_from([1.0, 0.5, 2.0]))
    p("tau_neg", st.sampled_from([1.05, 1.0, 3.0]))
    return [1.0, 2.0, 0.5]  # the gate's centre and its shoulders


def _tau(c: Case, pos: str = "tau_pos", neg: str = "tau_neg") -> np.ndarray:
    return np.where(_valid(c)[2] > 0, float(c.arg(pos)), float(c.arg(neg)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.asarray(np.where(x >= 0, 1.0 / (1.0 + np.exp(-x)), np.exp(x) / (1.0 + np.exp(x))))


def _sapo_tolerance(c: Case) -> Conditioning:
    assert c.mask is not None
    logp, old, adv = _valid(c)
    tau = _tau(c)
    size = 4.0 / tau * np.abs(adv) * (1.0 + tau * np.minimum(_ratio(c), 1e300) * tol.exp_cond(logp - old) / 4.0)
    return tol.sum_cond(c.mask.size), agg.abs_scale(c, size)


def _sapo_gradient(c: Case, w: np.ndarray) -> dict[str, Grad]:
    r, tau, adv = _ratio(c), _tau(c), _valid(c)[2]
    s = _sigmoid(tau * (r - 1.0))
    with np.errstate(invalid="ignore", over="ignore"):
        g = np.nan_to_num(-4.0 * s * (1.0 - s) * r * adv, nan=0.0)  # r = inf: s(1 - s) = 0 first
        # sigma (1 - sigma) cancels where the gate saturates: a candidate's 1 - sigma is only as exact as its dtype
        # relative to 1, so the scale is the size of the terms, 4 r |A| (times the aggregation weight)
        terms = np.nan_to_num(np.abs(4.0 * np.minimum(r, 1e300) * adv * agg.case_weights(c) * w), posinf=1e300)
    return {"logp": Grad(agg.case_weights(c) * g * w, np.full(g.shape, np.nan), terms)}


def _sapo_per_token(pos: str = "tau_pos", neg: str = "tau_neg", *, four_over_tau: bool = True, log_gate: bool = False):  # type: ignore[no-untyped-def]
    def per_token(c: Case) -> np.ndarray:
        logp, old, adv = _valid(c)
        tau = _tau(c, pos, neg)
        x = tau * (logp - old) if log_gate else tau * (_ratio(c) - 1.0)
        return np.asarray((4.0 / tau if four_over_tau else 1.0) * _sigmoid(x) * adv)

    return per_token


def _sapo_clamped(c: Case, bound: float) -> np.ndarray:
    logp, old, adv = _valid(c)
    tau = _tau(c)
    return np.asarray(4.0 / tau * _sigmoid(tau * (np.exp(np.clip(logp - old, -bound, bound)) - 1.0)) * adv)


def _sapo_variants() -> list[Variant]:
    swapped = _loss(_sapo_per_token("tau_neg", "tau_pos"))
    one = _loss(_sapo_per_token("tau_pos", "tau_pos"))
    return [
        Variant("temperatures swapped", "tau_neg for A > 0 and tau_pos for A < 0", swapped),
        Variant("one temperature", "tau_pos for every token (tau_neg ignored)", one),
        Variant("no 4/tau factor", "sigma(tau (r - 1)) A: the gate without 4/tau",
                _loss(_sapo_per_token(four_over_tau=False))),
        Variant("gate on log r", "sigma(tau log r) instead of sigma(tau (r - 1))",
                _loss(_sapo_per_token(log_gate=True))),
        *_agg_variants(_sapo_per_token()),
        *_clamp_variants(_sapo_clamped, "the token log-ratio"),
    ]  # fmt: skip


SAPO_LOSS = register(
    FormulaSpec(
        id="sapo_loss",
        reference=R.sapo_loss,
        torch_name="sapo_loss",
        strategy=_token_cases("sapo_loss", _sapo_hyper),  # type: ignore[arg-type]
        tolerance=_sapo_tolerance,
        tolerance_note="per-token (4/tau)|A| plus the gate's sensitivity |A| r exp_cond to the rounding of Delta, "
        "aggregated like the loss.",
        differentiable=("logp",),
        gradient=_sapo_gradient,
        paper="Gao et al. 2025 (SAPO, Qwen)",
        equation="the SAPO gate f(r; tau) = 4/tau sigma(tau (r - 1))",
        docs_page="grpo-losses",
        derivations=("sapo_gate_gradient",),
        conventions=("tau_pos", "tau_neg", "agg", "max_tokens"),
        variants=tuple(_sapo_variants()),
        exponentiates=True,
        stability=ppo.extreme,
        stability_note="log-ratios to +-50: the gate saturates (4/tau or 0), r = e^50 must not give NaN",
        bad_hyper=(("tau_pos", 0.0), ("tau_neg", -1.0), ("agg", "sum")),
        bad_input=agg.empty_row,
    )
)

# ----------------------------------------------------------------------------------------------------------------
# GSPO


def _gspo_hyper(p: Params) -> list[float]:
    low = float(p("clip_eps", st.sampled_from([3e-4, 0.2])))
    high = p("clip_eps_high", st.sampled_from([4e-4, None, 0.28]))
    p("log_ratio_clamp", st.sampled_from([None, 10.0]))
    return [1.0 - low, 1.0 + (low if high is None else float(high))]


def _seq_log_ratio(c: Case, *, product: bool = False, padded: bool = False) -> np.ndarray:
    """log s_b per row [B, 1]: the mean over the valid tokens (``product``: the sum; ``padded``: sum / T)."""
    assert c.mask is not None
    logp, old, _ = _valid(c)
    total = np.where(c.mask, logp - old, 0.0).sum(axis=1, keepdims=True)
    if product:
        return np.asarray(total)
    n = c.mask.shape[1] if padded else np.maximum(c.mask.sum(axis=1, keepdims=True), 1)
    return np.asarray(total / n)


def _gspo_s(c: Case, log_s: np.ndarray, clamp: float | str | None = "case") -> np.ndarray:
    bound = c.arg("log_ratio_clamp") if clamp == "case" else clamp
    x = log_s if bound is None else np.clip(log_s, -float(bound), float(bound))
    with np.errstate(over="ignore"):
        return np.asarray(np.exp(x) * np.ones_like(_valid(c)[0]))


def _gspo_per_token(c: Case, s: np.ndarray) -> np.ndarray:
    low, high = ppo.clip_eps(c)
    adv = _valid(c)[2]
    return np.asarray(np.minimum(s * adv, np.clip(s, 1.0 - low, 1.0 + high) * adv))


def _gspo_tolerance(c: Case) -> Conditioning:
    assert c.mask is not None
    log_s = _seq_log_ratio(c)
    s = np.minimum(_gspo_s(c, log_s), 1e300)
    size = (s * tol.exp_cond(log_s) * (1.0 + np.abs(_valid(c)[0] - _valid(c)[1]))) * np.abs(_valid(c)[2])
    return tol.sum_cond(c.mask.size), agg.abs_scale(c, size + 2.0 * np.abs(_valid(c)[2]))


def _gspo_active(c: Case) -> tuple[np.ndarray, np.ndarray]:
    """(d objective / d log pi_t divided by A s_b: 1 where the unclipped branch is active, else 0; the other
    one-sided value at a kink of the clip or the clamp, NaN elsewhere)."""
    log_s = _seq_log_ratio(c)
    s = _gspo_s(c, log_s)
    adv = _valid(c)[2]
    low, high = ppo.clip_eps(c)
    clipped = ((adv > 0) & (s > 1.0 + high)) | ((adv < 0) & (s < 1.0 - low))
    bound = c.arg("log_ratio_clamp")
    clamped = np.zeros_like(clipped) if bound is None else np.abs(log_s) > bound
    active = np.where(clipped | clamped, 0.0, 1.0)
    rtol = kink_rtol()
    near = np.zeros(s.shape, dtype=bool)
    for b in (1.0 - low, 1.0 + high):
        near |= np.abs(s - b) <= rtol * b
    if bound is not None:
        near |= np.abs(np.abs(log_s) - bound) <= rtol * bound * np.ones_like(s)
    return active, np.where(near, 1.0 - active, np.nan)


def _gspo_gradient(c: Case, w: np.ndarray) -> dict[str, Grad]:
    active, alt = _gspo_active(c)
    base = -agg.case_weights(c) * _gspo_s(c, _seq_log_ratio(c)) * _valid(c)[2] * w
    with np.errstate(invalid="ignore"):
        return {"logp": Grad(np.where(active > 0, base, 0.0), np.where(np.isnan(alt), np.nan, base * alt))}


def _gspo_variants() -> list[Variant]:
    def seq(
        product: bool = False, padded: bool = False, clamp: float | str | None = "case"
    ) -> Callable[[Case], np.ndarray]:
        return lambda c: _gspo_per_token(c, _gspo_s(c, _seq_log_ratio(c, product=product, padded=padded), clamp))

    def token_ratio(c: Case) -> float:
        logp, old, adv, m = c.args
        return float(R.policy_loss(logp, old, adv, m, clip_eps=c.arg("clip_eps"), clip_eps_high=c.arg("clip_eps_high"),
                                   agg=c.arg("agg"), max_tokens=c.arg("max_tokens")))  # fmt: skip

    def clamp_10(c: Case) -> float:  # verl: torch.clamp(log s, max=10), from above only
        if c.arg("log_ratio_clamp") is not None:
            raise NotImplementedError
        return _loss(lambda cs: _gspo_per_token(cs, _gspo_s(cs, np.minimum(_seq_log_ratio(cs), 10.0), None)))(c)

    return [
        Variant("product of the token ratios", "s_b = exp(sum_t log r): the unnormalised sequence ratio (TRL's RLOO "
                "trainer) instead of the geometric mean", _loss(seq(product=True))),
        Variant("token ratios (PPO)", "the PPO clip on each token ratio instead of the sequence ratio",
                token_ratio),
        Variant("mean over the padded length", "log s_b = sum_t log r / T: padding counted in the geometric mean",
                _loss(seq(padded=True))),
        Variant("log-ratio clamp at 10", "the sequence log-ratio clamped from above at 10 before exp (verl gspo)",
                clamp_10),
        *_agg_variants(seq()),
    ]  # fmt: skip


def _gspo_not_stopped(c: Case, w: np.ndarray) -> dict[str, np.ndarray]:
    """GSPO with the sequence ratio differentiated (no sg(s_b)): the gradient of s_b = exp(mean log r) spreads each
    row's GSPO-token gradient evenly over the row's valid tokens (equal to GSPO-token when A is constant per
    sequence)."""
    assert c.mask is not None
    g = _gspo_gradient(c, w)["logp"].value
    n = np.maximum(c.mask.sum(axis=1, keepdims=True), 1)
    return {"logp": np.where(c.mask, np.where(c.mask, g, 0.0).sum(axis=1, keepdims=True) / n, 0.0)}


GSPO_LOSS = register(
    FormulaSpec(
        id="gspo_loss",
        reference=R.gspo_loss,
        torch_name="gspo_loss",
        strategy=_token_cases("gspo_loss", _gspo_hyper, small=True),  # type: ignore[arg-type]
        tolerance=_gspo_tolerance,
        tolerance_note="s_b |A| with exp amplifying the rounding of the mean log-ratio (exp_cond) and of each "
        "token's log-ratio, plus the clipped branch's 2|A|, aggregated like the loss.",
        differentiable=("logp",),
        gradient=_gspo_gradient,
        gradient_of=lambda c: _as_pg(c, _gspo_s(c, _seq_log_ratio(c)) * _gspo_active(c)[0]),
        paper="Zheng et al. 2025 (GSPO, Qwen)",
        equation="eq. 5 (GSPO), eq. 14-15 (GSPO-token)",
        docs_page="grpo-losses",
        derivations=("gspo_token_equals_gspo",),
        gradient_variants=(
            GradientVariant(
                "GSPO with the sequence ratio differentiated",
                "exp(mean log r) without sg(): each sequence's gradient spread evenly over its tokens (TRL's "
                "importance_sampling_level='sequence', OpenRLHF's gspo): the same as GSPO-token only when the "
                "advantage is constant per sequence",
                _gspo_not_stopped,
            ),
        ),
        conventions=("clip_eps", "clip_eps_high", "agg", "log_ratio_clamp", "max_tokens"),
        variants=tuple(_gspo_variants()),
        exponentiates=True,
        stability=ppo.extreme,
        stability_note="log-ratios to +-50: sequence ratios far outside the band, beyond verl's clamp at 10",
        bad_hyper=(("clip_eps", 0.0), ("clip_eps", 1.5), ("log_ratio_clamp", 0.0), ("agg", "sum")),
        bad_input=agg.empty_row,
    )
)
