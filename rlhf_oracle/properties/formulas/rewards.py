"""The InstructGPT objective and its parts: everything the oracle knows about ``kl_shaped_rewards`` (the KL
folded into a per-token reward), ``rlhf_objective`` (score - beta KL + gamma ptx) and ``ptx_loss``.

- inputs: sequence scores, log-ratios of the policy to the SFT model, beta from 0 to 1, the KL kind and the
  score slot drawn (a pad kept after every row for ``"after_last"``), ptx batches of their own shape; the
  extreme regime: log-ratios to +-50 (estimator values beyond the frameworks' +-10 clamp);
- the tolerance: beta times the estimator's scale plus |score|; the objective's terms per row;
- the gradients: -beta/B at every valid token of the objective; the aggregation weights of the ptx loss;
- the variants: the KL kind, the log-ratio flipped, the penalty added, the score slot (TRL vs verl/OpenRLHF),
  the score missing, a clamped estimate; the signs of the KL and ptx terms, a per-token mean KL; the ptx loss's
  aggregation alternatives.
"""

from __future__ import annotations

import functools

import numpy as np
from hypothesis import strategies as st

from rlhf_oracle import reference as R

from .. import tolerances as tol
from ..axes import aggregation as agg
from ..axes import kl
from ..axes.composed import aggregate_like_variants
from ..axes.ppo import CLAMP_GRID
from ..cases import (
    Accepted,
    Case,
    Draw,
    Fixed,
    Params,
    advantages_like,
    far_log_ratios,
    fill_masked,
    fill_padding,
    float_arrays,
    log_ratios,
    masks,
    shape_bt,
)
from ..gradients import Grad, no_alt
from ..registry import Conditioning, FormulaSpec, register
from ..variants import Fitted, Variant, negated, unused, where

__all__ = ["KL_SHAPED_REWARDS", "PTX_LOSS", "RLHF_OBJECTIVE"]

_SHAPED_ARGS = ("scores", "logp", "logp_ref", "mask", "beta")

# ----------------------------------------------------------------------------------------------------------------
# inputs


@st.composite
def _shaped_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = shape_bt(draw)
    p = Params("kl_shaped_rewards", draw, fixed, accepted)
    p("kind", st.sampled_from(kl.DRAW_ORDER))
    position = p("score_position", st.sampled_from(R.SCORE_POSITIONS))
    m = draw(masks(b, t, min_valid=1, need_pad_after=position == "after_last"))
    logp_ref = draw(float_arrays((b, t), -20.0, 0.0))
    logp = logp_ref + draw(log_ratios((b, t), limit=2.0))
    scores = draw(advantages_like((b,)))
    beta = draw(st.sampled_from([0.0, 0.05, 0.1, 1.0]))
    arrays = {"logp": logp, "logp_ref": logp_ref}
    fill = fill_padding(draw, arrays, m)
    args = (scores, arrays["logp"], arrays["logp_ref"], m, beta)
    return Case("kl_shaped_rewards", args, _SHAPED_ARGS, p.finish(), m, ("logp", "logp_ref"), fill)


@st.composite
def _objective_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = shape_bt(draw)
    m = draw(masks(b, t, min_valid=1))
    logp_ref = draw(float_arrays((b, t), -20.0, 0.0))
    logp = logp_ref + draw(log_ratios((b, t)))
    scores = draw(advantages_like((b,)))
    beta = draw(st.sampled_from([0.0, 0.02, 0.1, 1.0]))
    arrays = {"logp": logp, "logp_ref": logp_ref}
    fill = fill_padding(draw, arrays, m)
    p = Params("rlhf_objective", draw, fixed, accepted)
    gamma = p("gamma", st.sampled_from([0.0, 0.0, 27.8, 1.0]))
    if gamma != 0.0 or (draw(st.booleans()) and (accepted is None or "ptx_logp" in accepted)):
        b2, t2 = shape_bt(draw)
        ptx_mask = draw(masks(b2, t2, min_valid=1))
        ptx_logp = fill_masked(draw(float_arrays((b2, t2), -20.0, 0.0)), ptx_mask, fill)
        p.kwargs.update(ptx_logp=ptx_logp, ptx_mask=ptx_mask)
    args = (scores, arrays["logp"], arrays["logp_ref"], m, beta)
    return Case("rlhf_objective", args, _SHAPED_ARGS, p.finish(), m, ("logp", "logp_ref"), fill)


@st.composite
def _ptx_cases(draw: Draw, fixed: Fixed, accepted: Accepted) -> Case:
    b, t = shape_bt(draw)
    p = Params("ptx_loss", draw, fixed, accepted)
    agg.draw_mode(p, t)
    m = draw(masks(b, t, min_valid=1))
    if not m.any():
        m[0, 0] = True
    arrays = {"logp": draw(float_arrays((b, t), -30.0, 0.0))}
    fill = fill_padding(draw, arrays, m)
    return Case("ptx_loss", (arrays["logp"], m), ("logp", "mask"), p.finish(), m, ("logp",), fill)


def _shaped_extreme(c: Case, draw: Draw) -> Case:
    return far_log_ratios(c, draw, "logp_ref", "logp")


def _ptx_unused(c: Case) -> tuple[str, ...]:
    """The ptx arrays do not enter the objective at gamma = 0."""
    return () if c.arg("gamma") else ("ptx_logp", "ptx_mask")


# ----------------------------------------------------------------------------------------------------------------
# the maths: tolerances and gradients


def _tol_shaped(c: Case) -> Conditioning:
    assert c.mask is not None
    n = c.named()
    size = kl.scale(c, tol.valid(c, "logp"), tol.valid(c, "logp_ref"))
    scores = np.abs(tol.finite(n["scores"]))[:, None]
    return 1.0, np.where(c.mask, float(n["beta"]) * size, 0.0) + np.where(c.mask, scores, 0.0)


def _tol_objective(c: Case) -> Conditioning:
    assert c.mask is not None
    n = c.named()
    lr = np.abs(tol.valid(c, "logp")) + np.abs(tol.valid(c, "logp_ref"))
    scale = float(np.mean(np.abs(tol.finite(n["scores"])) + float(n["beta"]) * lr.sum(1)))
    gamma = float(c.arg("gamma"))
    if gamma and n.get("ptx_mask") is not None:
        pm = np.asarray(n["ptx_mask"], dtype=bool)
        scale += gamma * float(np.abs(np.where(pm, tol.finite(n["ptx_logp"]), 0.0)).sum() / max(int(pm.sum()), 1))
    return tol.sum_cond(c.mask.size), scale


def _tol_ptx(c: Case) -> Conditioning:
    assert c.mask is not None
    return tol.sum_cond(c.mask.size), agg.abs_scale(c, tol.valid(c, "logp"), "agg")


def _objective_gradient(c: Case, w: np.ndarray) -> dict[str, Grad]:
    assert c.mask is not None
    b = c.mask.shape[0]
    return {"logp": no_alt(np.where(c.mask, -float(c.named()["beta"]) / b, 0.0) * w)}


def _ptx_gradient(c: Case, w: np.ndarray) -> dict[str, Grad]:
    assert c.mask is not None
    return {"logp": no_alt(-w * agg.weights(c.mask, *agg.settings(c)))}


# ----------------------------------------------------------------------------------------------------------------
# variants


def _score_slot(m: np.ndarray, position: str, trl_fallback: bool = True) -> list[int]:
    slots = []
    for b in range(m.shape[0]):
        last = int(np.flatnonzero(m[b])[-1])
        if position == "last":
            slots.append(last)
        else:
            slots.append(min(last + 1, m.shape[1] - 1) if trl_fallback else last + 1)
    return slots


def _shaped(
    c: Case, *, kind: str | None = None, flip: bool = False, sign: float = -1.0, position: str | None = None
) -> np.ndarray:
    n = c.named()
    m = np.asarray(n["mask"], dtype=bool)
    kind = kind or c.arg("kind")
    position = position or c.arg("score_position")
    d = kl.delta(c)
    out = where(m, sign * float(n["beta"]) * kl.estimator(kind, -d if flip else d))
    scores = np.asarray(n["scores"], dtype=np.float64)
    for b, slot in enumerate(_score_slot(m, position)):
        out[b, slot] += scores[b]
    return out


def _shaped_variants() -> list[Variant]:
    out: list[Variant] = []
    for kind in kl.KINDS:
        out.append(Variant(f"kind={kind!r}", f"the {kind} estimator in the reward",
                           functools.partial(_shaped, kind=kind), {"kind": kind}))  # fmt: skip
        if kind != "abs":  # |-Delta| = |Delta|
            out.append(Variant(f"kind={kind!r} with the log-ratio flipped",
                               f"{kind} of logp_ref - logp (KL sign flipped)",
                               functools.partial(_shaped, kind=kind, flip=True)))  # fmt: skip
    out.append(Variant("penalty added", "+beta kl instead of -beta kl", lambda c: _shaped(c, sign=1.0)))
    out.append(
        Variant(
            "score_position='after_last'",
            "score on the slot after the last valid token, the first pad (TRL PPO, DS-Chat; TRL falls back to the "
            "last slot when the row has no pad)",
            lambda c: _shaped(c, position="after_last"),
            {"score_position": "after_last"},
        )
    )
    out.append(
        Variant(
            "score_position='last'",
            "score on the last valid token, the EOS (verl, OpenRLHF)",
            lambda c: _shaped(c, position="last"),
            {"score_position": "last"},
        )
    )

    def no_score(c: Case) -> np.ndarray:
        return _shaped(c.with_inputs(scores=np.zeros_like(np.asarray(c.named()["scores"], dtype=np.float64))))

    out.append(Variant("score missing", "the sequence score is not added", no_score))

    def estimate_clamped(c: Case, bound: float) -> np.ndarray:
        n = c.named()
        m = np.asarray(n["mask"], dtype=bool)
        with np.errstate(all="ignore"):
            k = kl.estimator(c.arg("kind"), kl.delta(c))
            correction = float(n["beta"]) * where(m, k - np.clip(k, -bound, bound))
        return np.asarray(_shaped(c) + correction)

    out.append(
        Fitted(
            "KL estimate clamped to +-{c}",
            "the per-token estimate clamped to [-{c}, {c}] before the penalty (OpenRLHF compute_approx_kl clamps "
            "every estimator to +-10): beyond it the penalty stops growing",
            unused,
            param_compute=estimate_clamped,
            grid=lambda c, actual: CLAMP_GRID,
        )
    )
    return out


def _objective_variants() -> list[Variant]:
    def build(c: Case, *, beta_sign: float = -1.0, ptx_sign: float = -1.0, token_mean: bool = False) -> float:
        n = c.named()
        m = np.asarray(n["mask"], dtype=bool)
        per_seq = where(m, kl.delta(c)).sum(1)
        if token_mean:
            with np.errstate(all="ignore"):
                per_seq = per_seq / m.sum(1)
        value = float(np.mean(np.asarray(n["scores"]) + beta_sign * float(n["beta"]) * per_seq))
        gamma = float(c.arg("gamma"))
        if gamma != 0.0:
            value += ptx_sign * gamma * R.ptx_loss(n["ptx_logp"], n["ptx_mask"])
        return value

    return [
        Variant("KL penalty sign flipped", "+beta log(pi/pi_ref): the penalty rewards moving away",
                lambda c: build(c, beta_sign=1.0)),
        Variant("ptx term sign flipped", "+gamma L_ptx: the pretraining loss added instead of its log-likelihood",
                lambda c: build(c, ptx_sign=1.0)),
        Variant("per-token mean KL", "the KL term averaged over the sequence's tokens instead of summed",
                lambda c: build(c, token_mean=True)),
        negated(R.rlhf_objective, "the loss -J instead of the objective J"),
    ]  # fmt: skip


def _logp(c: Case) -> np.ndarray:
    return np.asarray(c.args[0], dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------------
# the registry entries

KL_SHAPED_REWARDS = register(
    FormulaSpec(
        id="kl_shaped_rewards",
        reference=R.kl_shaped_rewards,
        torch_name="kl_shaped_rewards",
        strategy=_shaped_cases,
        tolerance=_tol_shaped,
        tolerance_note="elementwise: beta times the estimator's scale (see kl_estimate), plus |score| on the score "
        "slot's row.",
        differentiable=(),
        gradient=None,
        paper="Ziegler et al. 2019 (KL in the reward); Ouyang et al. 2022 (InstructGPT)",
        equation="Ziegler et al. §2.2; InstructGPT eq. 2",
        docs_page="instructgpt",
        derivations=("kl_reward_telescoping",),
        conventions=("kind", "score_position"),
        variants=tuple(_shaped_variants()),
        per_token_output=True,
        exponentiates=True,
        stability=_shaped_extreme,
        stability_note="log-ratios to +-50: estimator values beyond +-10",
        bad_hyper=(("beta", -0.1), ("kind", "k4"), ("score_position", "eos")),
        masked_output_note="the per-token KL penalty is written at masked positions too (not multiplied by the mask)",
    )
)

RLHF_OBJECTIVE = register(
    FormulaSpec(
        id="rlhf_objective",
        reference=R.rlhf_objective,
        torch_name="rlhf_objective",
        strategy=_objective_cases,
        tolerance=_tol_objective,
        tolerance_note="mean over rows of |score| + beta sum_t(|logp| + |logp_ref|) (+ gamma |ptx| term), reduced "
        "over B*T.",
        differentiable=("logp",),
        gradient=_objective_gradient,
        paper="Ouyang et al. 2022, Training language models to follow instructions with human feedback",
        equation="eq. 2",
        docs_page="instructgpt",
        derivations=("kl_reward_telescoping",),
        conventions=("gamma",),
        variants=tuple(_objective_variants()),
        bad_hyper=(("beta", -1.0), ("gamma", -1.0)),
        inert=_ptx_unused,
    )
)

PTX_LOSS = register(
    FormulaSpec(
        id="ptx_loss",
        reference=R.ptx_loss,
        torch_name="ptx_loss",
        strategy=_ptx_cases,
        tolerance=_tol_ptx,
        tolerance_note="a masked mean of log-probabilities: eps * mean |logp| * (1 + log2 n).",
        differentiable=("logp",),
        gradient=_ptx_gradient,
        paper="Ouyang et al. 2022 (InstructGPT, PPO-ptx)",
        equation="eq. 2 (gamma term)",
        docs_page="instructgpt",
        derivations=(),
        conventions=("agg",),
        variants=tuple(aggregate_like_variants("agg", _logp, base_sign=-1.0)),
        bad_hyper=(("agg", "mean"),),
    )
)
