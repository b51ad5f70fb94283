"""The PPO clip axis, shared by ``ppo_clip_objective``, ``ppo_clip_grad`` and ``policy_loss`` (and the demo's
in-loop oracle through them): the clip bounds, the per-token objective and its variants (max instead of min,
swapped or symmetric bounds, the dual clip's mistakes, an inverted ratio, a log-ratio clamp before exp), the
kinks of its gradient, the magnitude its tolerance scales by, its strategy and its extreme regime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from rlhf_oracle import reference as R

from .. import tolerances as tol
from ..cases import Case, Draw, Params, advantages_like, far_log_ratios, float_arrays, log_ratios
from ..gradients import kink_rtol
from ..variants import Variant, fit_constant, fmt, negated, unused

__all__ = [
    "CLAMP_GRID",
    "DUAL_CLIP_GRID",
    "OBJECTIVES",
    "PPOElementwise",
    "arrays",
    "bounds",
    "clip_eps",
    "draw_clip",
    "extreme",
    "kinks",
    "objective",
    "objective_variants",
    "scale",
]

DUAL_CLIP_GRID = [1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 10.0]
"""Where the dual-clip constant c is searched (then refined between neighbours): Ye et al. 2020 use 3."""

CLAMP_GRID = [1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0]
"""Where a clamp bound is searched (then refined): verl and OpenRLHF clamp log-ratios to +-20, estimators to +-10."""


def clip_eps(c: Case) -> tuple[float, float]:
    """(eps_low, eps_high) of the case: the one place the clip-bound rule is read (clip_eps_high defaults to
    clip_eps)."""
    eps = float(c.arg("clip_eps"))
    high = c.arg("clip_eps_high")
    return eps, eps if high is None else float(high)


def bounds(c: Case) -> tuple[float, float, float | None]:
    """(1 - eps_low, 1 + eps_high, dual_clip) of the case."""
    eps, high = clip_eps(c)
    dual = c.arg("dual_clip")
    return 1.0 - eps, 1.0 + high, None if dual is None else float(dual)


# ----------------------------------------------------------------------------------------------------------------
# inputs


def draw_clip(p: Params) -> None:
    """The clip hyper-parameters: clip_eps, clip-higher (DAPO's 0.28) and the dual clip (Ye et al.'s 3)."""
    p("clip_eps", st.sampled_from([0.2, 0.1, 0.3]))
    p("clip_eps_high", st.sampled_from([None, 0.28]))
    p("dual_clip", st.sampled_from([None, 3.0]))


def arrays(draw: Draw, shape: tuple[int, ...], far: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logp, logp_old, advantages): log-ratios exactly at the clip bounds, tiny, moderate (and far)."""
    logp_old = draw(float_arrays(shape, -20.0, 0.0))
    delta = draw(log_ratios(shape, far=far))
    adv = draw(advantages_like(shape))
    return logp_old + delta, logp_old, adv


def extreme(c: Case, draw: Draw) -> Case:
    """Log-ratios to +-50 (r = e^50): beyond the +-20 clamp of verl and OpenRLHF."""
    return far_log_ratios(c, draw, "logp_old", "logp")


STABILITY_NOTE = "log-ratios to +-50 (r = e^50): beyond the +-20 clamp of verl and OpenRLHF"


# ----------------------------------------------------------------------------------------------------------------
# the maths: tolerance scale and gradient kinks


def scale(c: Case) -> np.ndarray:
    """Per-token magnitude of r A: exp turns the rounding of Delta into a relative error ~ eps |Delta| of r
    (exp_cond); the clipped branch adds |A|(1 + eps)."""
    logp, old, adv = tol.valid(c, "logp"), tol.valid(c, "logp_old"), tol.valid(c, "advantages")
    delta = logp - old
    with np.errstate(over="ignore"):
        r = np.exp(delta)
    return np.asarray(np.abs(r * adv) * tol.exp_cond(delta) + 2.0 * np.abs(adv))


def kinks(c: Case) -> tuple[np.ndarray, np.ndarray]:
    """(gradient d objective / d logp, alternative at the clip kinks) on the valid inputs."""
    n = c.named()
    logp, old, adv = (np.asarray(n[k], dtype=np.float64) for k in ("logp", "logp_old", "advantages"))
    if c.mask is not None:
        logp, old, adv = (np.where(c.mask, a, 0.0) for a in (logp, old, adv))
    kw = {k: n[k] for k in ("clip_eps", "clip_eps_high", "dual_clip") if k in n}
    g = R.ppo_clip_grad(logp, old, adv, **kw)
    r = np.exp(logp - old)
    low, high, dual = bounds(c)
    # a kink where r sits on a bound up to the candidate's rounding of exp (kink_band)
    near = np.zeros(r.shape, dtype=bool)
    rtol = kink_rtol()
    for bound in [low, high] + ([dual] if dual is not None else []):
        near |= np.abs(r - bound) <= rtol * bound
    alt = np.where(near, np.where(g == 0, r * adv, 0.0), np.nan)
    return g, alt


# ----------------------------------------------------------------------------------------------------------------
# variants of the per-token objective

OBJECTIVES: dict[str, str] = {
    "max instead of min": "max(r A, clip(r) A): the pessimistic bound inverted (objective and loss signs mixed)",
    "clip bounds swapped": "clip(r, 1 - eps_high, 1 + eps_low): clip_eps and clip_eps_high exchanged",
    "symmetric clip": "clip_eps_high ignored: symmetric clip(r, 1 - eps, 1 + eps)",
    "no clip": "plain r A (no clipping)",
    "lower clip bound missing": "clip(r, max=1 + eps_high) only: the lower bound 1 - eps forgotten",
    "upper clip bound missing": "clip(r, min=1 - eps) only: the upper bound 1 + eps_high forgotten",
    "ratio inverted": "r = pi_old / pi = exp(logp_old - logp)",
    "dual clip on positive A": "max(., c A) applied to every advantage, not only A < 0 (tianshou #433)",
    "dual clip missing": "dual_clip ignored",
    "dual clip always on": "dual clip max(min(r A, clip(r) A), c A) applied for A < 0 although not asked "
    "(verl compute_policy_loss_vanilla: clip_ratio_c = 3 always on; Ye et al. 2020)",
}
"""The objective variants the diagnosis names, and what each computes."""

_CLAMP_TEXT = (
    "log-ratio clamped to [-{c}, {c}] before exp (verl and OpenRLHF clamp to +-20): the ratio saturates at "
    "e^{c}, so far from the old policy the loss and its gradient are not those of PPO"
)


def objective(c: Case, variant: str, dual_c: float | None = None, clamp: float | None = None) -> np.ndarray:
    """The per-token objective min(r A, clip(r) A) (with the dual clip), or one of its ``variant``s."""
    n = c.named()
    logp, old, adv = (np.asarray(n[k], dtype=np.float64) for k in ("logp", "logp_old", "advantages"))
    eps, high = clip_eps(c)
    dual = bounds(c)[2]
    with np.errstate(all="ignore"):
        delta = (old - logp) if variant == "ratio inverted" else (logp - old)
        if clamp is not None:
            delta = np.clip(delta, -clamp, clamp)
        ratio = np.exp(delta)
        if variant == "clip bounds swapped":
            low_b, high_b = 1 - high, 1 + eps
        elif variant == "symmetric clip":
            low_b, high_b = 1 - eps, 1 + eps
        else:
            low_b, high_b = 1 - eps, 1 + high
        if variant == "lower clip bound missing":
            low_b = -np.inf
        elif variant == "upper clip bound missing":
            high_b = np.inf
        unclipped = ratio * adv
        clipped = np.clip(ratio, low_b, high_b) * adv
        if variant == "no clip":
            obj = unclipped
        elif variant == "max instead of min":
            obj = np.maximum(unclipped, clipped)
        else:
            obj = np.minimum(unclipped, clipped)
        if variant == "dual clip always on":
            dual = dual_c
        if dual is not None and variant != "dual clip missing":
            if variant == "dual clip on positive A":
                obj = np.maximum(obj, dual * adv)
            else:
                obj = np.where(adv < 0, np.maximum(obj, dual * adv), obj)
    out: np.ndarray = obj
    return out


def applies(c: Case, variant: str) -> bool:
    """Whether ``variant`` differs from the reference on this case's hyper-parameters."""
    if variant in ("clip bounds swapped", "symmetric clip"):
        return c.arg("clip_eps_high") is not None
    if variant in ("dual clip on positive A", "dual clip missing"):
        return c.arg("dual_clip") is not None
    if variant == "dual clip always on":
        return c.arg("dual_clip") is None
    return True


def name(obj: str | None, dual_c: float | None, clamp: float | None) -> tuple[list[str], list[str]]:
    """(name parts, description parts) of an objective variant with its fitted constants."""
    parts, descriptions = [], []
    if obj == "dual clip always on":
        parts.append(f"dual clip always on (c={fmt(dual_c or 0.0)})")
        descriptions.append(OBJECTIVES[obj].replace("c A", f"{fmt(dual_c or 0.0)} A"))
    elif obj:
        parts.append(obj)
        descriptions.append(OBJECTIVES[obj])
    if clamp is not None:
        parts.append(f"log-ratio clamp at {fmt(clamp)}")
        descriptions.append(_CLAMP_TEXT.format(c=fmt(clamp)))
    return parts, descriptions


def fit(
    c: Case, actual: list[np.ndarray] | None, obj: str | None, clamp: bool, evaluate: Callable[..., Any]
) -> tuple[float | None, float | None]:
    """Fit the dual-clip c and/or the clamp bound of a PPO variant to the candidate's output."""
    if actual is None:
        raise NotImplementedError
    dual_c: float | None = None
    bound: float | None = None
    if obj == "dual clip always on":
        dual_c = fit_constant(lambda cs, k: evaluate(cs, k, None), c, actual, DUAL_CLIP_GRID)
        if dual_c is None:
            raise NotImplementedError
    if clamp:
        bound = fit_constant(lambda cs, k: evaluate(cs, dual_c, k), c, actual, CLAMP_GRID)
        if bound is None:
            raise NotImplementedError
    return dual_c, bound


@dataclass(frozen=True)
class PPOElementwise(Variant):
    """A PPO objective variant (with an optional log-ratio clamp) whose constants are fitted per output."""

    obj: str | None = None
    clamp: bool = False

    def resolve(self, case: Case, actual: list[np.ndarray] | None = None) -> Variant:
        obj = self.obj
        if obj is not None and not applies(case, obj):
            raise NotImplementedError

        def evaluate(cs: Case, dual_c: float | None, bound: float | None) -> np.ndarray:
            return objective(cs, obj or "reference", dual_c, bound)

        dual_c, bound = (None, None)
        if obj == "dual clip always on" or self.clamp:
            dual_c, bound = fit(case, actual, obj, self.clamp, evaluate)
        parts, descriptions = name(obj, dual_c, bound)
        return Variant(" + ".join(parts), "; ".join(descriptions), lambda cs: evaluate(cs, dual_c, bound), None,
                       self.deviations)  # fmt: skip


def objective_variants() -> list[Variant]:
    """Every objective variant, with and without a log-ratio clamp, and the sign flipped."""
    out: list[Variant] = []
    for obj in [*OBJECTIVES, None]:
        for clamp in (False, True):
            deviations = (obj is not None) + clamp
            if deviations:
                out.append(PPOElementwise("", "", unused, None, deviations, obj, clamp))
    out.append(negated(R.ppo_clip_objective, "-min(r A, clip(r) A): the loss instead of the objective"))
    return out
