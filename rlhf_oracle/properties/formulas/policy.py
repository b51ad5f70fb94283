"""The policy objectives and losses: everything the oracle knows about ``ppo_clip_objective``,
``ppo_clip_grad``, ``aggregate``, ``policy_loss`` and ``pg_loss``.

The clip (bounds, dual clip, kinks, objective variants) is the shared axis :mod:`..axes.ppo`, the token
aggregation the shared axis :mod:`..axes.aggregation`; this module puts them together per formula:

- inputs: log-ratios exactly at the clip bounds, tiny, moderate; advantages of both signs; clip-higher and the
  dual clip drawn; masks with holes; the extreme regime: log-ratios to +-50;
- the tolerance: r A amplified by exp (exp_cond), aggregated like the loss;
- the gradients: the piecewise d/dlog pi of Schulman et al. eq. 7 (``reference.ppo_clip_grad``, proved in
  :mod:`rlhf_oracle.derivations`) with both one-sided values at the kinks, times the aggregation weights;
- the variants: the objective variants x a log-ratio clamp x an aggregation alternative x the sign (up to three
  deviations at once), and the gradient's own mistakes (no zero where the clip binds, d/dr, the gradient of max);
- ``pg_loss`` (REINFORCE / GPG): log-probabilities, advantages and, when the candidate takes them, importance
  weights; its gradient -agg(w A) on ``logp`` whatever the ``form``, and exactly 0 on ``weights`` (sg); the
  variants: the other ``form``, the weights ignored, the aggregation alternatives and the sign.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from hypothesis import strategies as st

from rlhf_oracle import reference as R

from .. import tolerances as tol
from ..axes import aggregation as agg
from ..axes import ppo
from ..axes.composed import N_ALTERNATIVES, Composed, aggregate_like_variants, axes_of
from ..cases import (
    Accepted,
    Case,
    Draw,
    Fixed,
    Params,
    advantages_like,
    fill_padding,
    float_arrays,
    masks,
    shape_bt,
)
from ..gradients import Grad, GradientVariant, no_alt
from ..registry import Conditioning, FormulaSpec, register
from ..variants import Variant, negated, unused

__all__ = ["AGGREGATE", "PG_LOSS", "POLICY_LOSS", "PPO_CLIP_GRAD", "PPO_CLIP_OBJECTIVE", "frozen_pg_case"]

_PPO_ARGS = ("logp", "logp_old", "advantages")

# ----------------------------------------------------------------------------------------------------------------
# inputs


def _elementwise(formula: str) -> Callable[[Fixed, Accepted], st.SearchStrategy[Case]]:
    @st.composite
    def cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
        shape = draw(st.sampled_from([(draw(st.integers(1, 16)),), shape_bt(draw)]))
        logp, logp_old, adv = ppo.arrays(draw, shape)
        p = Params(formula, draw, fixed, accepted)
        ppo.draw_clip(p)
        return Case(formula, (logp, logp_old, adv), _PPO_ARGS, p.finish())

    return cases


@st.composite
def _aggregate_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = shape_bt(draw)
    p = Params("aggregate", draw, fixed, accepted)
    mode = agg.draw_mode(p, t)
    m = draw(masks(b, t, min_valid=1))  # every row of a maths case has a valid token (empty rows: edge_cases)
    if mode == "token-mean" and not m.any():
        m[0, 0] = True
    arrays = {"values": draw(advantages_like((b, t)))}
    fill = fill_padding(draw, arrays, m)
    return Case("aggregate", (arrays["values"], m), ("values", "mask"), p.finish(), m, ("values",), fill)


# the optional per-token weights of policy_loss and pg_loss (decoupled PPO, TIS): drawn when the candidate takes
# them, data for the gradient (sg)


def _draw_weights(p: Params, arrays: dict[str, np.ndarray], shape: tuple[int, int]) -> None:
    """Draw the per-token weights into ``arrays`` (so that their padding is filled like the other inputs')."""
    weights = p("weights", st.one_of(st.none(), float_arrays(shape, 0.0, 3.0)))
    if weights is not None:
        arrays["weights"] = weights


def _kwargs_with_weights(p: Params, arrays: dict[str, np.ndarray]) -> dict[str, object]:
    """The case's keyword arguments, with the padded weights in place of the drawn ones."""
    kwargs = p.finish()
    if "weights" in arrays:
        kwargs["weights"] = arrays["weights"]
    return kwargs


def _token_weights(c: Case) -> np.ndarray:
    """The per-token weights of the case at its valid positions (1 where none are given)."""
    return np.ones_like(tol.valid(c, "logp")) if c.arg("weights") is None else tol.valid(c, "weights")


def _stopped_weights(c: Case, like: np.ndarray) -> dict[str, Grad]:
    """The reference gradient of the weights when the case has them: exactly 0 (sg)."""
    return {} if c.arg("weights") is None else {"weights": no_alt(np.zeros_like(like))}


def _weights_ignored(reference: Callable[..., float]) -> Variant:
    def unweighted(c: Case) -> float:
        if c.arg("weights") is None:
            raise NotImplementedError  # nothing to ignore
        return float(reference(*c.args, **{**c.kwargs, "weights": None}))

    return Variant("weights ignored", "the per-token weights are not multiplied in (w = 1)", unweighted)


def frozen_pg_case(c: Case, frozen: np.ndarray, advantages: np.ndarray) -> Case:
    """The ``pg_loss`` case whose value has, on ``logp``, the gradient ``-agg(frozen * advantages * grad log pi)``
    under the case's own aggregation: for a loss defined by its gradient (``sg()`` inside), the value the
    finite-difference test differentiates (``FormulaSpec.gradient_of``)."""
    assert c.mask is not None
    logp = tol.valid(c, "logp")
    kwargs = {"agg": c.arg("agg"), "weights": np.where(c.mask, frozen, 0.0)}
    if "max_tokens" in c.kwargs:
        kwargs["max_tokens"] = c.kwargs["max_tokens"]
    return Case("pg_loss", (logp, advantages, c.mask), ("logp", "advantages", "mask"), kwargs, c.mask, (), c.fill)


@st.composite
def _policy_loss_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = shape_bt(draw)
    p = Params("policy_loss", draw, fixed, accepted)
    ppo.draw_clip(p)
    mode = agg.draw_mode(p, t)
    m = draw(masks(b, t, min_valid=1))
    if mode == "token-mean" and not m.any():
        m[0, 0] = True
    logp, logp_old, adv = ppo.arrays(draw, (b, t))
    arrays = {"logp": logp, "logp_old": logp_old, "advantages": adv}
    _draw_weights(p, arrays, (b, t))
    fill = fill_padding(draw, arrays, m)
    args = (arrays["logp"], arrays["logp_old"], arrays["advantages"], m)
    return Case("policy_loss", args, (*_PPO_ARGS, "mask"), _kwargs_with_weights(p, arrays), m, tuple(arrays), fill)


# ----------------------------------------------------------------------------------------------------------------
# the maths: tolerances and gradients


def _tol_ppo(c: Case) -> Conditioning:
    return 1.0, ppo.scale(c)


def _tol_aggregate(c: Case) -> Conditioning:
    assert c.mask is not None
    return tol.sum_cond(c.mask.size), agg.abs_scale(c, tol.valid(c, "values"), "agg")


def _tol_policy_loss(c: Case) -> Conditioning:
    assert c.mask is not None
    scale = ppo.scale(c) * np.abs(_token_weights(c))
    return tol.sum_cond(c.mask.size), agg.abs_scale(c, scale, "agg")


def _objective_gradient(c: Case, w: np.ndarray) -> dict[str, Grad]:
    g, alt = ppo.kinks(c)
    return {"logp": Grad(w * g, w * alt)}


def _policy_loss_gradient(c: Case, w: np.ndarray) -> dict[str, Grad]:
    assert c.mask is not None
    g, alt = ppo.kinks(c)
    weights = agg.weights(c.mask, *agg.settings(c)) * _token_weights(c)  # sg(w) scales each token's gradient
    value = np.where(c.mask, -weights * g, 0.0) * w
    return {"logp": Grad(value, np.where(c.mask, -weights * alt, np.nan) * w), **_stopped_weights(c, value)}


def _detached_branch(branch: str) -> Callable[[Case, np.ndarray], dict[str, np.ndarray]]:
    """The gradient when the ratio is detached in one branch of min(r A, clip(r) A): inside the clip band the two
    branches tie and torch.minimum splits the gradient 0.5/0.5; outside it the live branch carries it alone."""

    def gradient(c: Case, w: np.ndarray) -> dict[str, np.ndarray]:
        g = _policy_loss_gradient(c, w)["logp"].value
        n = c.named()
        r = np.exp(np.asarray(n["logp"], dtype=np.float64) - np.asarray(n["logp_old"], dtype=np.float64))
        low, high, _ = ppo.bounds(c)
        inside = (r > low) & (r < high)
        return {"logp": np.where(inside, 0.5 * g, g if branch == "clipped" else 0.0)}

    return gradient


def _aggregate_gradient(c: Case, w: np.ndarray) -> dict[str, Grad]:
    assert c.mask is not None
    return {"values": no_alt(w * agg.weights(c.mask, *agg.settings(c, "agg")))}


# ----------------------------------------------------------------------------------------------------------------
# variants


def _grad_variants() -> list[Variant]:
    def ratio(c: Case) -> np.ndarray:
        n = c.named()
        return np.asarray(np.exp(np.asarray(n["logp"]) - np.asarray(n["logp_old"])))

    def unclipped(c: Case) -> np.ndarray:
        return np.asarray(ratio(c) * c.named()["advantages"])

    def wrt_ratio(c: Case) -> np.ndarray:
        return np.asarray(R.ppo_clip_grad(*c.args, **c.kwargs) / ratio(c))

    def of_max(c: Case) -> np.ndarray:
        r, adv = ratio(c), np.asarray(c.named()["advantages"])
        low, high, _dual = ppo.bounds(c)
        inside = (r >= low) & (r <= high)
        active = inside | ((adv > 0) & (r > high)) | ((adv < 0) & (r < low))
        return np.asarray(np.where(active, r * adv, 0.0))

    return [
        Variant("no zero where the clip binds", "r A everywhere: the clip does not stop the gradient", unclipped),
        Variant("d/dr instead of d/dlog pi", "A (or 0): the derivative with respect to the ratio r", wrt_ratio),
        Variant("gradient of max instead of min", "the gradient of max(r A, clip(r) A)", of_max),
        negated(R.ppo_clip_grad, "the gradient of the loss -L instead of the objective L"),
    ]


def _policy_loss_variants() -> list[Variant]:
    out: list[Variant] = [_weights_ignored(R.policy_loss)]
    for obj in [*ppo.OBJECTIVES, None]:
        for clamp in (False, True):
            for agg_index in [*range(N_ALTERNATIVES), None]:
                for sign in (1.0, -1.0):
                    deviations = (obj is not None) + clamp + (agg_index is not None) + (sign < 0)
                    if deviations == 0 or deviations > 3:
                        continue
                    out.append(Composed("", "", unused, None, deviations, obj, agg_index, sign, axes_of("agg"),
                                        clamp))  # fmt: skip
    return out


def _values(c: Case) -> np.ndarray:
    return np.asarray(c.args[0], dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------------
# the registry entries

_CLIP = ("clip_eps", "clip_eps_high", "dual_clip")

PPO_CLIP_OBJECTIVE = register(
    FormulaSpec(
        id="ppo_clip_objective",
        reference=R.ppo_clip_objective,
        torch_name="ppo_clip_objective",
        strategy=_elementwise("ppo_clip_objective"),
        tolerance=_tol_ppo,
        tolerance_note="elementwise: exp turns the rounding of Delta into a relative error ~ eps |Delta| of r "
        "(exp_cond); the clipped branch adds |A|(1 + eps).",
        differentiable=("logp",),
        gradient=_objective_gradient,
        paper="Schulman et al. 2017, Proximal Policy Optimization Algorithms",
        equation="eq. 7",
        docs_page="ppo-clip",
        derivations=("ppo_clip_grad",),
        conventions=_CLIP,
        variants=tuple(ppo.objective_variants()),
        exponentiates=True,
        stability=ppo.extreme,
        stability_note=ppo.STABILITY_NOTE,
        bad_hyper=(("clip_eps", 0.0), ("clip_eps", -0.1), ("clip_eps", 1.5), ("dual_clip", 0.5)),
    )
)

PPO_CLIP_GRAD = register(
    FormulaSpec(
        id="ppo_clip_grad",
        reference=R.ppo_clip_grad,
        torch_name="ppo_clip_grad",
        strategy=_elementwise("ppo_clip_grad"),
        tolerance=_tol_ppo,
        tolerance_note="as ppo_clip_objective: r A computed from exp(Delta).",
        differentiable=(),
        gradient=None,
        paper="derived from Schulman et al. 2017 eq. 7 (sympy-checked)",
        equation="d eq. 7 / d log pi",
        docs_page="ppo-clip",
        derivations=("ppo_clip_grad",),
        conventions=_CLIP,
        variants=tuple(_grad_variants()),
        value_alternative=lambda c: ppo.kinks(c)[1],
        exponentiates=True,
        stability=ppo.extreme,
        stability_note="log-ratios to +-50 (r = e^50)",
        bad_hyper=(("clip_eps", -0.2), ("dual_clip", 1.0)),
    )
)

AGGREGATE = register(
    FormulaSpec(
        id="aggregate",
        reference=R.aggregate,
        torch_name="aggregate",
        strategy=_aggregate_cases,
        tolerance=_tol_aggregate,
        tolerance_note="a masked mean: error ~ eps * (same mean of |values|) * (1 + log2 n).",
        differentiable=("values",),
        gradient=_aggregate_gradient,
        paper="the seed / DeepSeekMath eq. 1 (1/|o|); DAPO eq. 8 (token-mean); Liu et al. 2025 Dr. GRPO (constant)",
        equation="DeepSeekMath eq. 1; DAPO eq. 8",
        docs_page="from-rl-to-lm",
        derivations=(),
        conventions=("agg", "max_tokens"),
        variants=tuple(aggregate_like_variants("agg", _values)),
        bad_hyper=(("agg", "mean"), ("max_tokens", 0)),
        bad_input=agg.empty_row,
    )
)

POLICY_LOSS = register(
    FormulaSpec(
        id="policy_loss",
        reference=R.policy_loss,
        torch_name="policy_loss",
        strategy=_policy_loss_cases,
        tolerance=_tol_policy_loss,
        tolerance_note="per-token PPO scale (see ppo_clip_objective) aggregated like the loss, times the "
        "reduction's 1 + log2 n.",
        differentiable=("logp", "weights"),
        gradient=_policy_loss_gradient,
        stopped=("weights",),
        gradient_variants=(
            GradientVariant(
                "ratio detached in the clipped branch",
                "min(r A, clip(sg(r)) A): inside the clip band "
                "the branches tie and torch.minimum gives each half the gradient, so PPO's gradient is "
                "halved there",
                _detached_branch("clipped"),
            ),
            GradientVariant(
                "ratio detached in the unclipped branch",
                "min(sg(r) A, clip(r) A): half the gradient inside the clip band (the tie), none outside it",
                _detached_branch("unclipped"),
            ),
        ),
        paper="Shao et al. 2024 (DeepSeekMath) token-level PPO; Yu et al. 2025 (DAPO) clip-higher; Ye et al. 2020 "
        "dual clip",
        equation="DeepSeekMath eq. 1; DAPO eq. 8; Ye et al. eq. 5",
        docs_page="ppo-clip",
        derivations=("ppo_clip_grad",),
        conventions=(*_CLIP, "agg", "max_tokens"),
        variants=tuple(_policy_loss_variants()),
        exponentiates=True,
        stability=ppo.extreme,
        stability_note=ppo.STABILITY_NOTE,
        bad_hyper=(("clip_eps", 0.0), ("agg", "sum"), ("dual_clip", 0.9), ("clip_eps_high", -0.1)),
        bad_input=agg.empty_row,
    )
)


# ----------------------------------------------------------------------------------------------------------------
# pg_loss: REINFORCE / GPG, no ratio to an old policy and no clip

_PG_ARGS = ("logp", "advantages")


@st.composite
def _pg_loss_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = shape_bt(draw)
    p = Params("pg_loss", draw, fixed, accepted)
    mode = agg.draw_mode(p, t)
    p("form", st.sampled_from(R.PG_FORMS))
    m = draw(masks(b, t, min_valid=1))
    if mode == "token-mean" and not m.any():
        m[0, 0] = True
    arrays = {"logp": draw(float_arrays((b, t), -12.0, 0.0)), "advantages": draw(advantages_like((b, t)))}
    _draw_weights(p, arrays, (b, t))
    fill = fill_padding(draw, arrays, m)
    args = (arrays["logp"], arrays["advantages"], m)
    return Case("pg_loss", args, (*_PG_ARGS, "mask"), _kwargs_with_weights(p, arrays), m, tuple(arrays), fill)


def _pg_per_token(c: Case) -> np.ndarray:
    """The per-token loss term -w A log pi (``form="logp"``) or -w A (``"ratio"``), 0 at masked slots."""
    coef = tol.valid(c, "advantages") * _token_weights(c)
    if c.arg("form") == "logp":
        coef = coef * tol.valid(c, "logp")
    return np.asarray(-coef)


def _tol_pg_loss(c: Case) -> Conditioning:
    assert c.mask is not None
    size = np.abs(_token_weights(c) * tol.valid(c, "advantages")) * (1.0 + np.abs(tol.valid(c, "logp")))
    return tol.sum_cond(c.mask.size), agg.abs_scale(c, size)


def _pg_loss_gradient(c: Case, w: np.ndarray) -> dict[str, Grad]:
    assert c.mask is not None
    weights = agg.weights(c.mask, *agg.settings(c))
    g = np.where(c.mask, -weights * _token_weights(c) * tol.valid(c, "advantages"), 0.0) * w
    return {"logp": no_alt(g), **_stopped_weights(c, g)}


def _pg_loss_variants() -> list[Variant]:
    def other_form(c: Case) -> float:
        other = next(f for f in R.PG_FORMS if f != c.arg("form"))
        return float(R.pg_loss(*c.args, **{**c.kwargs, "form": other}))

    return [
        Variant(
            "the other form",
            "form='logp' (-w A log pi, verl gpg) where 'ratio' (-w A exp(log pi - sg(log pi)), value -w A) is "
            "asked, or the reverse: same gradient, different value",
            other_form,
        ),
        _weights_ignored(R.pg_loss),
        *aggregate_like_variants("agg", _pg_per_token),
    ]


PG_LOSS = register(
    FormulaSpec(
        id="pg_loss",
        reference=R.pg_loss,
        torch_name="pg_loss",
        strategy=_pg_loss_cases,
        tolerance=_tol_pg_loss,
        tolerance_note="per-token |w A| (1 + |log pi|) aggregated like the loss, times the reduction's 1 + log2 n.",
        differentiable=("logp", "weights"),
        gradient=_pg_loss_gradient,
        stopped=("weights",),
        gradient_of=lambda c: c.with_inputs(form="logp"),
        paper="Williams 1992 (REINFORCE); Chu et al. 2025 (GPG)",
        equation="Williams 1992 §3",
        docs_page="grpo-losses",
        derivations=("pg_forms_same_gradient",),
        conventions=("agg", "form", "max_tokens"),
        variants=tuple(_pg_loss_variants()),
        bad_hyper=(("agg", "sum"), ("form", "log"), ("max_tokens", 0)),
        bad_input=agg.empty_row,
    )
)
