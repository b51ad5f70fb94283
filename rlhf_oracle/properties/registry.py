"""One registry drives everything: formula id -> reference, torch twin, strategy, tolerance, paper, docs, sympy.

Each :class:`FormulaSpec` gathers what the oracle knows about one catalogue formula. The checks in
:mod:`rlhf_oracle.properties.checks`, the parametrised tests in ``tests/properties``, the CLI and the docs all
read this table; ``tests/properties/test_registry.py`` fails when a formula of the catalogue has no entry or an
entry lacks a part.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from hypothesis import strategies as st

from rlhf_oracle import reference as R

from . import strategies as S
from . import tolerances as tol
from .gradients import GRADIENTS, Grad, ppo_kinks
from .strategies import Case
from .variants import VARIANTS, Variant

__all__ = ["CATALOGUE", "REGISTRY", "FormulaSpec", "get"]

CATALOGUE = (
    "token_logprobs",
    "entropy_from_logits",
    "ppo_clip_objective",
    "ppo_clip_grad",
    "aggregate",
    "policy_loss",
    "kl_estimate",
    "kl_exact",
    "kl_shaped_rewards",
    "rlhf_objective",
    "ptx_loss",
    "reward_model_loss",
    "ranking_loss",
    "gae",
    "whiten",
    "value_loss",
    "adaptive_kl_update",
    "grpo_advantages",
)
"""The formula ids of SPEC.md's catalogue (the controller class is covered through ``adaptive_kl_update``)."""

Conditioning = tuple[float, Any]
"""``(cond, scale)`` of :func:`rlhf_oracle.properties.tolerances.bound` for one case."""


@dataclass(frozen=True)
class FormulaSpec:
    """Everything the oracle knows about one formula."""

    id: str
    reference: Callable[..., Any]
    """The NumPy ground truth in :mod:`rlhf_oracle.reference`."""
    torch_name: str
    """Name of the twin in :mod:`rlhf_oracle.torch_impl` (same name, same argument order)."""
    strategy: Callable[[Mapping[str, Any], Container[str] | None], st.SearchStrategy[Case]]
    """``strategy(fixed, accepted)`` -> valid cases (see :func:`rlhf_oracle.properties.strategies.cases`)."""
    tolerance: Callable[[Case], Conditioning]
    """``(cond, scale)`` of the tolerance policy for a case; the reason is in ``tolerance_note``."""
    tolerance_note: str
    differentiable: tuple[str, ...]
    """Inputs whose gradient is checked (empty: the formula is used under ``no_grad`` in every framework)."""
    gradient: Callable[[Case, np.ndarray], dict[str, Grad]] | None
    paper: str
    equation: str
    docs_page: str
    """Slug of the docs page (``docs/<slug>.md``)."""
    derivations: tuple[str, ...]
    """Names in :mod:`rlhf_oracle.derivations` that pin the formula down (may be empty for definitions)."""
    conventions: tuple[str, ...]
    """Keyword arguments that select a documented convention (passed through by the checks)."""
    variants: tuple[Variant, ...]
    """Known convention variants and bug classes, evaluated for the diagnosis."""
    per_token_output: bool = False
    """Output is [B, T] and must be exactly 0 at masked positions."""
    bf16: bool = True
    """Whether a bf16 comparison makes sense (False for scalar-only formulas)."""
    value_alternative: Callable[[Case], np.ndarray] | None = None
    """For outputs with a jump (``ppo_clip_grad`` on a clip bound): the other one-sided value, NaN elsewhere."""
    exponentiates: bool = False
    """The formula runs exp on a log-ratio (an overflow is a plausible cause of a non-finite result)."""
    stability_note: str = ""
    """What the ``stability`` property's inputs are for this formula, and what real code does there."""

    @property
    def has_mask(self) -> bool:
        """The formula takes a required ``[B, T]`` mask (edge cases and masked slots apply)."""
        p = inspect.signature(self.reference).parameters.get("mask")
        return p is not None and p.default is inspect.Parameter.empty

    def cases(
        self, fixed: Mapping[str, Any] | None = None, accepted: Container[str] | None = None
    ) -> st.SearchStrategy[Case]:
        return self.strategy(dict(fixed or {}), accepted)


# ----------------------------------------------------------------------------------------------------------------
# conditioning of each formula (cond, scale): see tolerances.py for the policy


def _f(x: Any) -> np.ndarray:
    return np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _valid(c: Case, name: str) -> np.ndarray:
    x = _f(c.named()[name])
    return np.where(c.mask, x, 0.0) if c.mask is not None and name in c.per_token else x


def _agg_abs(c: Case, per_token: np.ndarray, arg: str, default: str) -> float:
    assert c.mask is not None
    m = c.mask
    mode = c.kwargs.get(arg, default)
    x = np.where(m, np.abs(per_token), 0.0)
    if mode == "seq-mean-token-mean":
        return float(np.mean(x.sum(1) / np.maximum(m.sum(1), 1)))
    if mode == "token-mean":
        return float(x.sum() / max(int(m.sum()), 1))
    if mode == "seq-mean-token-sum":
        return float(np.mean(x.sum(1)))
    mt = c.kwargs.get("max_tokens")
    return float(np.mean(x.sum(1)) / (m.shape[1] if mt is None else mt))


def _logit_scale(z: np.ndarray, tau: float) -> np.ndarray:
    return np.asarray(1.0 + np.max(np.abs(z), axis=-1) / tau)


def _tol_token_logprobs(c: Case) -> Conditioning:
    z = _f(c.args[0])
    return tol.sum_cond(z.shape[-1]), _logit_scale(z, float(c.kwargs.get("temperature", 1.0)))


def _ppo_scale(c: Case) -> np.ndarray:
    logp, old, adv = _valid(c, "logp"), _valid(c, "logp_old"), _valid(c, "advantages")
    delta = logp - old
    with np.errstate(over="ignore"):
        r = np.exp(delta)
    return np.asarray(np.abs(r * adv) * tol.exp_cond(delta) + 2.0 * np.abs(adv))


def _tol_ppo(c: Case) -> Conditioning:
    return 1.0, _ppo_scale(c)


def _tol_aggregate(c: Case) -> Conditioning:
    assert c.mask is not None
    return tol.sum_cond(c.mask.size), _agg_abs(c, _valid(c, "values"), "mode", "seq-mean-token-mean")


def _tol_policy_loss(c: Case) -> Conditioning:
    assert c.mask is not None
    return tol.sum_cond(c.mask.size), _agg_abs(c, _ppo_scale(c), "agg", "seq-mean-token-mean")


def _kl_scale(c: Case, logp: np.ndarray, logp_ref: np.ndarray) -> np.ndarray:
    delta = logp - logp_ref
    clamp = c.kwargs.get("log_ratio_clamp")
    if clamp is not None:
        delta = np.clip(delta, -clamp, clamp)
    kind = c.kwargs.get("kind", "k1")
    if kind == "k1":
        return np.asarray(np.abs(delta))
    if kind == "k2":
        return np.asarray(delta**2)
    with np.errstate(over="ignore"):
        big = np.exp(np.minimum(-delta, 700.0))
    return np.asarray((1.0 + np.abs(delta)) * (1.0 + big))


def _tol_kl_estimate(c: Case) -> Conditioning:
    return 1.0, _kl_scale(c, _f(c.args[0]), _f(c.args[1]))


def _tol_kl_exact(c: Case) -> Conditioning:
    z, zr = _f(c.args[0]), _f(c.args[1])
    return tol.sum_cond(z.shape[-1]), 1.0 + np.max(np.abs(z), -1) + np.max(np.abs(zr), -1)


def _tol_kl_shaped(c: Case) -> Conditioning:
    assert c.mask is not None
    n = c.named()
    kl = _kl_scale(c, _valid(c, "logp"), _valid(c, "logp_ref"))
    scores = np.abs(_f(n["scores"]))[:, None]
    return 1.0, np.where(c.mask, float(n["beta"]) * kl, 0.0) + np.where(c.mask, scores, 0.0)


def _tol_rlhf_objective(c: Case) -> Conditioning:
    assert c.mask is not None
    n = c.named()
    lr = np.abs(_valid(c, "logp")) + np.abs(_valid(c, "logp_ref"))
    scale = float(np.mean(np.abs(_f(n["scores"])) + float(n["beta"]) * lr.sum(1)))
    gamma = float(n.get("gamma", 0.0))
    if gamma and n.get("ptx_mask") is not None:
        pm = np.asarray(n["ptx_mask"], dtype=bool)
        scale += gamma * float(np.abs(np.where(pm, _f(n["ptx_logp"]), 0.0)).sum() / max(int(pm.sum()), 1))
    return tol.sum_cond(c.mask.size), scale


def _tol_ptx(c: Case) -> Conditioning:
    assert c.mask is not None
    return tol.sum_cond(c.mask.size), _agg_abs(c, _valid(c, "logp"), "agg", "token-mean")


def _tol_rm(c: Case) -> Conditioning:
    n = c.named()
    gap = np.abs(_f(n["chosen"])) + np.abs(_f(n["rejected"]))
    return tol.sum_cond(gap.size), float(np.mean(1.0 + gap))


def _tol_ranking(c: Case) -> Conditioning:
    r = _f(c.args[0])
    return tol.sum_cond(r.size * r.shape[1]), float(1.0 + 2.0 * np.max(np.abs(r)))


def _tol_gae(c: Case) -> Conditioning:
    assert c.mask is not None
    r, v = np.abs(_valid(c, "rewards")), np.abs(_valid(c, "values"))
    row = (r + v).max(1, keepdims=True) if r.size else np.zeros((r.shape[0], 1))
    cond = tol.recursion_cond(c.mask.shape[1], float(c.kwargs.get("gamma", 1.0)), float(c.kwargs.get("lam", 0.95)))
    return cond, np.where(c.mask, row, 0.0)


def _tol_whiten(c: Case) -> Conditioning:
    assert c.mask is not None
    x = _valid(c, "x")
    vals = x[c.mask]
    mu = float(vals.mean())
    unbiased = bool(c.kwargs.get("unbiased", True))
    var = float(vals.var(ddof=1 if unbiased else 0))
    sigma = math.sqrt(var + float(c.kwargs.get("eps", 1e-8)))
    scale = (float(np.max(np.abs(vals))) + abs(mu)) / sigma
    if not c.kwargs.get("shift_mean", True):
        scale += abs(mu)
    return tol.sum_cond(vals.size), np.where(c.mask, scale, 0.0)


def _tol_value_loss(c: Case) -> Conditioning:
    assert c.mask is not None
    eps = c.kwargs.get("clip_eps", 0.2) or 0.0
    size = np.abs(_valid(c, "values")) + np.abs(_valid(c, "old_values")) + np.abs(_valid(c, "returns")) + eps
    return tol.sum_cond(c.mask.size), _agg_abs(c, size**2, "agg", "token-mean")


def _tol_adaptive(c: Case) -> Conditioning:
    beta, _kl, _target, n_steps, horizon = c.args
    return 1.0, abs(beta) * (1.0 + 0.2 * n_steps / horizon)


def _tol_grpo(c: Case) -> Conditioning:
    n = c.named()
    s = _f(n["scores"])
    g = int(n["group_size"])
    groups = s.reshape(-1, g)
    # a mean's rounding error is eps * mean|s| (the policy: the size of the terms summed), not eps * |mean|,
    # which is 0 when the scores cancel
    size = np.abs(groups) + np.abs(groups).mean(1, keepdims=True)
    if n.get("std_normalize", True):
        std = groups.std(1, ddof=1 if n.get("unbiased", True) else 0, keepdims=True)
        size = size / (std + float(n.get("eps", 1e-6)))
    flat = size.reshape(-1)
    mask = n.get("mask")
    scale = flat if mask is None else np.where(np.asarray(mask, dtype=bool), flat[:, None], 0.0)
    return tol.sum_cond(g), scale


# ----------------------------------------------------------------------------------------------------------------
# the table


def _spec(
    id: str,
    tolerance: Callable[[Case], Conditioning],
    tolerance_note: str,
    differentiable: tuple[str, ...],
    paper: str,
    equation: str,
    docs_page: str,
    derivations: tuple[str, ...],
    conventions: tuple[str, ...],
    **extra: Any,
) -> FormulaSpec:
    return FormulaSpec(
        id=id,
        reference=getattr(R, id),
        torch_name=id,
        strategy=lambda fixed, accepted: S.cases(id, fixed, accepted),
        tolerance=tolerance,
        tolerance_note=tolerance_note,
        differentiable=differentiable,
        gradient=GRADIENTS.get(id) if differentiable else None,
        paper=paper,
        equation=equation,
        docs_page=docs_page,
        derivations=derivations,
        conventions=conventions,
        variants=tuple(VARIANTS[id]),
        **extra,
    )


_SPECS = [
    _spec(
        "token_logprobs",
        _tol_token_logprobs,
        "log-softmax subtracts logsumexp from z/T: absolute error ~ eps * max|z|/T (scale), plus a reduction over "
        "V (cond).",
        ("logits",),
        "Shao et al. 2024 (DeepSeekMath), LM form of PPO: state (q, o_<t), action o_t",
        "eq. 1",
        "from-rl-to-lm",
        (),
        ("temperature",),
    ),
    _spec(
        "entropy_from_logits",
        _tol_token_logprobs,
        "logsumexp(z) - sum p z cancels two terms of size max|z|/T: absolute error ~ eps * max|z|/T.",
        ("logits",),
        "Schulman et al. 2017, entropy bonus S[pi](s_t)",
        "eq. 9",
        "from-rl-to-lm",
        (),
        ("temperature",),
    ),
    _spec(
        "ppo_clip_objective",
        _tol_ppo,
        "elementwise: exp turns the rounding of Delta into a relative error ~ eps |Delta| of r (exp_cond); the "
        "clipped branch adds |A|(1 + eps).",
        ("logp",),
        "Schulman et al. 2017, Proximal Policy Optimization Algorithms",
        "eq. 7",
        "ppo-clip",
        ("ppo_clip_grad",),
        ("clip_eps", "clip_eps_high", "dual_clip"),
    ),
    _spec(
        "ppo_clip_grad",
        _tol_ppo,
        "as ppo_clip_objective: r A computed from exp(Delta).",
        (),
        "derived from Schulman et al. 2017 eq. 7 (sympy-checked)",
        "d eq. 7 / d log pi",
        "ppo-clip",
        ("ppo_clip_grad",),
        ("clip_eps", "clip_eps_high", "dual_clip"),
        value_alternative=lambda c: ppo_kinks(c)[1],
    ),
    _spec(
        "aggregate",
        _tol_aggregate,
        "a masked mean: error ~ eps * (same mean of |values|) * (1 + log2 n).",
        ("values",),
        "the seed / DeepSeekMath eq. 1 (1/|o|); DAPO eq. 8 (token-mean); Liu et al. 2025 Dr. GRPO (constant)",
        "DeepSeekMath eq. 1; DAPO eq. 8",
        "from-rl-to-lm",
        (),
        ("mode", "max_tokens"),
    ),
    _spec(
        "policy_loss",
        _tol_policy_loss,
        "per-token PPO scale (see ppo_clip_objective) aggregated like the loss, times the reduction's 1 + log2 n.",
        ("logp",),
        "Shao et al. 2024 (DeepSeekMath) token-level PPO; Yu et al. 2025 (DAPO) clip-higher; Ye et al. 2020 dual clip",
        "DeepSeekMath eq. 1; DAPO eq. 8; Ye et al. eq. 5",
        "ppo-clip",
        ("ppo_clip_grad",),
        ("clip_eps", "clip_eps_high", "dual_clip", "agg", "max_tokens"),
    ),
    _spec(
        "kl_estimate",
        _tol_kl_estimate,
        "elementwise; the scale is the size of the terms: |Delta| (k1), Delta^2 (k2), (1 + |Delta|)(1 + e^-Delta) "
        "for k3 = e^-Delta - 1 + Delta (terms of size 1 cancel near Delta = 0; exp amplifies the error of Delta).",
        ("logp",),
        "Schulman 2020, Approximating KL Divergence (http://joschu.net/blog/kl-approx.html); DeepSeekMath",
        "k1/k2/k3; DeepSeekMath eq. 4",
        "kl-estimators",
        ("kl_estimators_expectation", "kl_estimator_gradients"),
        ("kind", "log_ratio_clamp"),
    ),
    _spec(
        "kl_exact",
        _tol_kl_exact,
        "sum_v p (log p - log q): log-softmax errors ~ eps * max|z| on both sides, reduced over V.",
        ("logits",),
        "definition of KL(pi || pi_ref)",
        "definition",
        "kl-estimators",
        ("kl_estimators_expectation",),
        (),
    ),
    _spec(
        "kl_shaped_rewards",
        _tol_kl_shaped,
        "elementwise: beta times the estimator's scale (see kl_estimate), plus |score| on the score slot's row.",
        (),
        "Ziegler et al. 2019 (KL in the reward); Ouyang et al. 2022 (InstructGPT)",
        "Ziegler et al. §2.2; InstructGPT eq. 2",
        "instructgpt",
        ("kl_reward_telescoping",),
        ("kind", "score_position"),
        per_token_output=True,
    ),
    _spec(
        "rlhf_objective",
        _tol_rlhf_objective,
        "mean over rows of |score| + beta sum_t(|logp| + |logp_ref|) (+ gamma |ptx| term), reduced over B*T.",
        ("logp",),
        "Ouyang et al. 2022, Training language models to follow instructions with human feedback",
        "eq. 2",
        "instructgpt",
        ("kl_reward_telescoping",),
        ("gamma",),
    ),
    _spec(
        "ptx_loss",
        _tol_ptx,
        "a masked mean of log-probabilities: eps * mean |logp| * (1 + log2 n).",
        ("logp",),
        "Ouyang et al. 2022 (InstructGPT, PPO-ptx)",
        "eq. 2 (gamma term)",
        "instructgpt",
        (),
        ("agg",),
    ),
    _spec(
        "reward_model_loss",
        _tol_rm,
        "softplus(-D) has absolute error ~ eps * |D| when D is itself a difference of rewards.",
        ("chosen", "rejected"),
        "Ouyang et al. 2022 (InstructGPT); Touvron et al. 2023 (Llama 2) margin",
        "InstructGPT eq. 1; Llama 2 eq. 2",
        "reward-model",
        ("neg_log_sigmoid_grad", "neg_log_sigmoid_symmetry", "neg_log_sigmoid_convexity"),
        ("margin",),
        bf16=True,
    ),
    _spec(
        "ranking_loss",
        _tol_ranking,
        "C(K,2) softplus terms of reward gaps up to 2 max|r|, reduced over B*K^2.",
        ("rewards",),
        "Ouyang et al. 2022 (InstructGPT)",
        "eq. 1",
        "reward-model",
        ("ranking_normaliser", "neg_log_sigmoid_grad"),
        (),
    ),
    _spec(
        "gae",
        _tol_gae,
        "backward recursion: errors of size eps * max_t(|r_t| + |V_t|) per step, carried with weight "
        "(gamma lam)^l: cond = 1 + min(T, 1/(1 - gamma lam)).",
        (),
        "Schulman et al. 2016, High-Dimensional Continuous Control Using GAE",
        "eq. 16 (and Schulman et al. 2017 eqs. 11-12)",
        "advantages",
        ("gae_lambda_one", "gae_lambda_zero"),
        ("gamma", "lam"),
        per_token_output=True,
    ),
    _spec(
        "whiten",
        _tol_whiten,
        "(x - mu)/sigma: mean and variance errors ~ eps (max|x| + |mu|), divided by sigma; reduced over n.",
        (),
        "common RLHF practice (openai/lm-human-preferences utils.whiten; TRL/verl masked_whiten)",
        "n/a (normalisation)",
        "advantages",
        (),
        ("shift_mean", "unbiased", "eps"),
        per_token_output=True,
    ),
    _spec(
        "value_loss",
        _tol_value_loss,
        "squared errors of differences of size |V| + |V_old| + |R| (+ eps): scale is their square, aggregated.",
        ("values",),
        "PPO value clipping (OpenAI baselines PPO2; Huang et al. 2022, 37 implementation details, #9)",
        "Schulman et al. 2017 eq. 9 (unclipped form)",
        "advantages",
        (),
        ("clip_eps", "agg", "max_tokens"),
    ),
    _spec(
        "adaptive_kl_update",
        _tol_adaptive,
        "two multiplications of Python floats: eps * beta * (1 + 0.2 n/h).",
        (),
        "Ziegler et al. 2019, Fine-Tuning Language Models from Human Preferences",
        "§2.2",
        "advantages",
        (),
        (),
        bf16=False,
    ),
    _spec(
        "grpo_advantages",
        _tol_grpo,
        "(s - mean)/(std + eps): errors ~ eps (|s| + |mean|), divided by std + eps (a tiny std amplifies them: "
        "the group-of-identical-scores case), reduced over the group.",
        (),
        "Shao et al. 2024 (DeepSeekMath) outcome supervision; Liu et al. 2025 (Dr. GRPO) without the std",
        "DeepSeekMath §4.1.2",
        "advantages",
        (),
        ("std_normalize", "unbiased", "eps"),
    ),
]

_EXPONENTIATES = ("ppo_clip_objective", "ppo_clip_grad", "policy_loss", "kl_estimate", "kl_shaped_rewards")

_STABILITY_NOTES = {
    "token_logprobs": "logit offsets of 1e4 and spreads of 1e3-1e4: softmax underflows to exactly 0, a stable "
    "log-softmax does not",
    "entropy_from_logits": "logit offsets of 1e4 and spreads of 1e3-1e4: p log p with p = 0 is NaN",
    "kl_exact": "logit offsets of 1e4 and spreads of 1e3-1e4",
    "ppo_clip_objective": "log-ratios to +-50 (r = e^50): beyond the +-20 clamp of verl and OpenRLHF",
    "ppo_clip_grad": "log-ratios to +-50 (r = e^50)",
    "policy_loss": "log-ratios to +-50 (r = e^50): beyond the +-20 clamp of verl and OpenRLHF",
    "kl_estimate": "log-ratios to +-1e4: estimator values far beyond the +-10 output clamp of OpenRLHF and verl, "
    "and beyond exp's range in float32 (88.7) and float64 (709.8)",
    "kl_shaped_rewards": "log-ratios to +-50: estimator values beyond +-10",
    "reward_model_loss": "reward gaps of 1e4: sigmoid underflows to 0, log(0) = -inf",
    "ranking_loss": "reward gaps of 1e2-1e4 inside a ranked row",
}

_SPECS = [
    replace(spec, exponentiates=spec.id in _EXPONENTIATES, stability_note=_STABILITY_NOTES.get(spec.id, ""))
    for spec in _SPECS
]

REGISTRY: dict[str, FormulaSpec] = {spec.id: spec for spec in _SPECS}
"""Formula id -> :class:`FormulaSpec`, one entry per catalogue formula."""


def register(
    spec: FormulaSpec,
    strategy: Callable[[Mapping[str, Any], Container[str] | None], st.SearchStrategy[Case]],
    *,
    stability: Callable[[Case, Any], Case] | None = None,
    bad_hyper: list[tuple[str, Any]] | None = None,
) -> FormulaSpec:
    """Add a formula family's entry: its :class:`FormulaSpec` (reference, tolerance, gradient, variants, docs),
    the hypothesis strategy of its maths inputs, and optionally how to push them into the extreme regime (the
    ``stability`` property), and out-of-range hyper-parameters for the error-parity check.
    Families in :mod:`rlhf_oracle.properties.families` call this at import."""
    if spec.id in REGISTRY:
        raise ValueError(f"formula {spec.id!r} is registered twice")
    S.register_strategy(spec.id, strategy)
    if stability is not None:
        S.register_stability(spec.id, stability)
    if bad_hyper:
        S.register_bad_hyper(spec.id, bad_hyper)
    REGISTRY[spec.id] = spec
    return spec


def get(formula: str) -> FormulaSpec:
    """The registry entry of ``formula``."""
    try:
        return REGISTRY[formula]
    except KeyError:
        raise KeyError(f"unknown formula {formula!r}; known: {', '.join(REGISTRY)}") from None


from . import families as _families  # noqa: E402  (registers the formula families; they import this module)

del _families
