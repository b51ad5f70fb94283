"""Known convention variants and bug classes of every formula, evaluated in NumPy for the diagnosis.

When a candidate disagrees with the reference, the check evaluates each variant of the formula on the same
inputs and names those that the candidate matches instead ("matches agg='token-mean', not
'seq-mean-token-mean'"). Variants that are documented conventions carry the keyword arguments that select them
in the reference (``kwargs``), so the report can say how to accept them; the others are known bug classes, each
with the public issue it comes from (see ``shared/research/framework-conventions.md``).

Every variant is a plain function of a :class:`~rlhf_oracle.properties.strategies.Case` (already rounded to the
candidate's dtype), built on the reference where it can be, and written out where the variant is a bug that the
reference cannot express.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlhf_oracle import reference as R

from .strategies import Case

__all__ = ["VARIANTS", "Variant"]


@dataclass(frozen=True)
class Variant:
    """One alternative reading of a formula."""

    name: str
    """Short name used in the diagnosis, e.g. ``"agg='token-mean'"`` or ``"min instead of max"``."""
    description: str
    """What it computes and who does it (framework, issue)."""
    compute: Callable[[Case], Any] = field(repr=False)
    kwargs: Mapping[str, Any] | None = None
    """Keyword arguments that select this variant in the reference, when it is a documented convention."""
    deviations: int = 1
    """How many independent changes from the reference (the diagnosis prefers the fewest)."""


def _kw(case: Case, **changes: Any) -> dict[str, Any]:
    return {**case.kwargs, **changes}


def _convention(fn: Callable[..., Any], name: str, value: Any, description: str) -> Variant:
    return Variant(
        f"{name}={value!r}",
        description,
        lambda c: fn(*c.args, **_kw(c, **{name: value})),
        kwargs={name: value},
    )


def _negated(fn: Callable[..., Any], what: str) -> Variant:
    return Variant("sign flipped", what, lambda c: _neg(fn(*c.args, **c.kwargs)))


def _neg(x: Any) -> Any:
    if isinstance(x, tuple):
        return tuple(-np.asarray(v) for v in x)
    return -np.asarray(x, dtype=np.float64)


def _by_name(fn: Callable[[Case, str], Any], name: str, case: Case) -> Any:
    return fn(case, name)


def _where(m: np.ndarray, x: Any) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.where(m, np.asarray(x, dtype=np.float64), 0.0)


# ----------------------------------------------------------------------------------------------------------------
# aggregation axis (shared by aggregate, policy_loss, ptx_loss, value_loss)

AGG_MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
_AGG_WHO = {
    "seq-mean-token-mean": "per-sequence 1/|o| average (the seed, GRPO eq. 3, TRL loss_type='grpo')",
    "token-mean": "sum m l / sum m over the batch (DAPO; verl, OpenRLHF and TRL PPO default)",
    "seq-mean-token-sum": "mean over rows of the per-row token sum",
    "seq-mean-token-sum-norm": "sum / (B L), constant normaliser (Dr. GRPO; verl uses the padded T as L)",
}


def _agg(x: np.ndarray, m: np.ndarray, mode: str, max_tokens: int | None) -> float:
    """Masked aggregation (masked slots of x may be garbage); NaN where a row/batch has no token."""
    xs = _where(m, x)
    with np.errstate(all="ignore"):
        if mode == "seq-mean-token-mean":
            return float(np.mean(xs.sum(1) / m.sum(1)))
        if mode == "token-mean":
            return float(xs.sum() / m.sum())
        if mode == "seq-mean-token-sum":
            return float(np.mean(xs.sum(1)))
        norm = x.shape[1] if max_tokens is None else max_tokens
        return float(np.mean(xs.sum(1)) / norm)


def _agg_fixed(mode: str, x: np.ndarray, m: np.ndarray, _current: str, max_tokens: int | None) -> float:
    return _agg(x, m, mode, max_tokens)


def _first_pad_extended(m: np.ndarray) -> np.ndarray:
    ext = m.copy()
    for b in range(m.shape[0]):
        valid = np.flatnonzero(m[b])
        if valid.size and valid[-1] + 1 < m.shape[1]:
            ext[b, valid[-1] + 1] = True
    return ext


@dataclass(frozen=True)
class _AggAxis:
    name: str
    description: str
    fn: Callable[[np.ndarray, np.ndarray, str, int | None], float]
    kwargs: Mapping[str, Any] | None


def _agg_axis(current: str, arg: str) -> list[_AggAxis]:
    """Aggregation alternatives to ``current``; x is the per-token value computed on the raw inputs."""
    axis = [
        _AggAxis(
            f"{arg}={mode!r}",
            _AGG_WHO[mode],
            functools.partial(_agg_fixed, mode),
            {arg: mode},
        )
        for mode in AGG_MODES
        if mode != current
    ]
    axis += [
        _AggAxis(
            "|o| over the batch",
            "each row's token sum divided by the batch's token count instead of the row's, then averaged over "
            "rows (= token-mean / B)",
            lambda x, m, _mode, _mt: _agg(x, m, "token-mean", None) / x.shape[0],
            None,
        ),
        _AggAxis(
            "first pad counted (as 0)",
            "the slot after the last valid token is counted in |o| with a zero value (a mask extended by one: "
            "TRL's padding_mask_p1 / DS-Chat PR #672 off-by-one)",
            lambda x, m, mode, mt: _agg(_where(m, x), _first_pad_extended(m), mode, mt),
            None,
        ),
        _AggAxis(
            "first pad counted (its values used)",
            "the slot after the last valid token is counted as valid, with whatever its inputs hold (a mask "
            "extended by one: TRL's padding_mask_p1 / DS-Chat PR #672 off-by-one)",
            lambda x, m, mode, mt: _agg(x, _first_pad_extended(m), mode, mt),
            None,
        ),
        _AggAxis(
            "unmasked mean",
            "plain mean over all B*T positions, padding included (verl #3805: an all-ones response mask)",
            lambda x, m, _mode, _mt: float(np.mean(x)),
            None,
        ),
        _AggAxis(
            "padded length as |o|",
            "each row's token sum divided by the padded length T (pad tokens counted in |o|)",
            lambda x, m, _mode, _mt: float(np.mean(_where(m, x).sum(1) / x.shape[1])),
            None,
        ),
    ]
    return axis


# ----------------------------------------------------------------------------------------------------------------
# PPO clip axis


def _ppo_np(c: Case, variant: str) -> np.ndarray:
    n = c.named()
    logp, old, adv = (np.asarray(n[k], dtype=np.float64) for k in ("logp", "logp_old", "advantages"))
    eps = float(n.get("clip_eps", 0.2))
    eps_high = n.get("clip_eps_high")
    high = eps if eps_high is None else float(eps_high)
    dual = n.get("dual_clip")
    with np.errstate(all="ignore"):
        ratio = np.exp((old - logp) if variant == "ratio inverted" else (logp - old))
        if variant == "clip bounds swapped":
            low_b, high_b = 1 - high, 1 + eps
        elif variant == "symmetric clip":
            low_b, high_b = 1 - eps, 1 + eps
        else:
            low_b, high_b = 1 - eps, 1 + high
        unclipped = ratio * adv
        clipped = np.clip(ratio, low_b, high_b) * adv
        if variant == "no clip":
            obj = unclipped
        elif variant == "max instead of min":
            obj = np.maximum(unclipped, clipped)
        else:
            obj = np.minimum(unclipped, clipped)
        if variant == "dual clip always on (c=3)":
            dual = 3.0 if dual is None else dual
        if dual is not None and variant != "dual clip missing":
            if variant == "dual clip on positive A":
                obj = np.maximum(obj, dual * adv)
            else:
                obj = np.where(adv < 0, np.maximum(obj, dual * adv), obj)
    out: np.ndarray = obj
    return out


_PPO_AXIS: dict[str, str] = {
    "max instead of min": "max(r A, clip(r) A): the pessimistic bound inverted (objective and loss signs mixed)",
    "clip bounds swapped": "clip(r, 1 - eps_high, 1 + eps_low): clip_eps and clip_eps_high exchanged",
    "symmetric clip": "clip_eps_high ignored: symmetric clip(r, 1 - eps, 1 + eps)",
    "no clip": "plain r A (no clipping)",
    "ratio inverted": "r = pi_old / pi = exp(logp_old - logp)",
    "dual clip on positive A": "max(., c A) applied to every advantage, not only A < 0 (tianshou #433)",
    "dual clip missing": "dual_clip ignored",
    "dual clip always on (c=3)": "dual clip with c = 3 applied for A < 0 even when not asked (verl's default)",
}


def _ppo_applies(c: Case, variant: str) -> bool:
    n = c.named()
    if variant in ("clip bounds swapped", "symmetric clip"):
        return n.get("clip_eps_high") is not None
    if variant in ("dual clip on positive A", "dual clip missing"):
        return n.get("dual_clip") is not None
    if variant == "dual clip always on (c=3)":
        return n.get("dual_clip") is None
    return True


def _ppo_variant(variant: str, description: str, sign: float = 1.0, deviations: int = 1) -> Variant:
    def compute(c: Case) -> np.ndarray:
        if not _ppo_applies(c, variant):
            raise NotImplementedError
        return sign * _ppo_np(c, variant)

    return Variant(variant, description, compute, deviations=deviations)


def _ppo_objective_variants() -> list[Variant]:
    out = [_ppo_variant(k, d) for k, d in _PPO_AXIS.items()]
    out.append(_negated(R.ppo_clip_objective, "-min(r A, clip(r) A): the loss instead of the objective"))
    return out


def _ppo_grad_variants() -> list[Variant]:
    def unclipped(c: Case) -> np.ndarray:
        n = c.named()
        return np.asarray(np.exp(n["logp"] - n["logp_old"]) * n["advantages"])

    def wrt_ratio(c: Case) -> np.ndarray:
        n = c.named()
        g = R.ppo_clip_grad(*c.args, **c.kwargs)
        r = np.exp(np.asarray(n["logp"]) - np.asarray(n["logp_old"]))
        return np.asarray(g / r)

    def of_max(c: Case) -> np.ndarray:
        n = c.named()
        r = np.exp(np.asarray(n["logp"]) - np.asarray(n["logp_old"]))
        adv = np.asarray(n["advantages"])
        eps = float(n.get("clip_eps", 0.2))
        high = eps if n.get("clip_eps_high") is None else float(n["clip_eps_high"])
        inside = (r >= 1 - eps) & (r <= 1 + high)
        active = inside | ((adv > 0) & (r > 1 + high)) | ((adv < 0) & (r < 1 - eps))
        return np.asarray(np.where(active, r * adv, 0.0))

    return [
        Variant("no zero where the clip binds", "r A everywhere: the clip does not stop the gradient", unclipped),
        Variant("d/dr instead of d/dlog pi", "A (or 0): the derivative with respect to the ratio r", wrt_ratio),
        Variant("gradient of max instead of min", "the gradient of max(r A, clip(r) A)", of_max),
        _negated(R.ppo_clip_grad, "the gradient of the loss -L instead of the objective L"),
    ]


def _policy_loss_variants() -> list[Variant]:
    out: list[Variant] = []
    agg_default = "seq-mean-token-mean"

    def make(obj: str | None, agg: _AggAxis | None, sign: float) -> Callable[[Case], float]:
        def compute(c: Case) -> float:
            if obj is not None and not _ppo_applies(c, obj):
                raise NotImplementedError
            per_token = _ppo_np(c, obj or "reference")
            m = np.asarray(c.named()["mask"], dtype=bool)
            mode = c.kwargs.get("agg", agg_default)
            mt = c.kwargs.get("max_tokens")
            value = agg.fn(per_token, m, mode, mt) if agg is not None else _agg(per_token, m, mode, mt)
            return -sign * value

        return compute

    # agg axis depends on the current mode; build the list for every possible current mode lazily
    def agg_axes(c: Case) -> list[_AggAxis]:
        return _agg_axis(c.kwargs.get("agg", agg_default), "agg")

    names = [*_PPO_AXIS, None]
    for obj in names:
        for agg_index in [*range(len(_agg_axis(agg_default, "agg"))), None]:
            for sign in (1.0, -1.0):
                deviations = (obj is not None) + (agg_index is not None) + (sign < 0)
                if deviations == 0 or deviations > 2:
                    continue
                out.append(_lazy_agg_variant(obj, agg_index, sign, deviations, agg_axes, make))
    return out


def _lazy_agg_variant(
    obj: str | None,
    agg_index: int | None,
    sign: float,
    deviations: int,
    agg_axes: Callable[[Case], list[_AggAxis]],
    make: Callable[[str | None, _AggAxis | None, float], Callable[[Case], float]],
) -> Variant:
    parts = [obj] if obj else []
    parts += [f"agg axis #{agg_index}"] if agg_index is not None else []
    parts += ["sign flipped"] if sign < 0 else []

    def compute(c: Case) -> float:
        axis = agg_axes(c)[agg_index] if agg_index is not None else None
        return make(obj, axis, sign)(c)

    return _NamedLazy(" + ".join(parts), "", compute, None, deviations, obj, agg_index, sign, agg_axes)


@dataclass(frozen=True)
class _NamedLazy(Variant):
    """A composed variant whose aggregation part is named only once the current mode is known."""

    obj: str | None = None
    agg_index: int | None = None
    sign: float = 1.0
    agg_axes: Callable[[Case], list[_AggAxis]] | None = field(default=None, repr=False)

    def resolve(self, case: Case) -> Variant:
        assert self.agg_axes is not None
        parts: list[str] = []
        descriptions: list[str] = []
        kwargs: dict[str, Any] | None = {}
        if self.obj:
            parts.append(self.obj)
            descriptions.append(_PPO_AXIS[self.obj])
            kwargs = None
        if self.agg_index is not None:
            axis = self.agg_axes(case)[self.agg_index]
            parts.append(axis.name)
            descriptions.append(axis.description)
            if axis.kwargs is None:
                kwargs = None
            elif kwargs is not None:
                kwargs.update(axis.kwargs)
        if self.sign < 0:
            parts.append("sign flipped")
            descriptions.append("the objective J returned instead of the loss -J")
            kwargs = None
        return Variant(" + ".join(parts), "; ".join(descriptions), self.compute, kwargs or None, self.deviations)


def _aggregate_like_variants(
    formula: str, fn: Callable[..., float], default: str, arg: str, per_token: Callable[[Case], np.ndarray]
) -> list[Variant]:
    def agg_axes(c: Case) -> list[_AggAxis]:
        return _agg_axis(c.kwargs.get(arg, default), arg)

    out: list[Variant] = []
    n_axis = len(_agg_axis(default, arg))
    for agg_index in [*range(n_axis), None]:
        for sign in (1.0, -1.0):
            deviations = (agg_index is not None) + (sign < 0)
            if deviations == 0:
                continue

            def compute(c: Case, agg_index: int | None = agg_index, sign: float = sign) -> float:
                m = np.asarray(c.named()["mask"], dtype=bool)
                x = per_token(c)
                mode, mt = c.kwargs.get(arg, default), c.kwargs.get("max_tokens")
                value = agg_axes(c)[agg_index].fn(x, m, mode, mt) if agg_index is not None else _agg(x, m, mode, mt)
                base_sign = -1.0 if formula == "ptx_loss" else 1.0
                return sign * base_sign * value

            out.append(_NamedLazy("", "", compute, None, deviations, None, agg_index, sign, agg_axes))
    return out


# ----------------------------------------------------------------------------------------------------------------
# value loss


def _value_per_token(c: Case, variant: str) -> np.ndarray:
    n = c.named()
    v, old, ret = (np.asarray(n[k], dtype=np.float64) for k in ("values", "old_values", "returns"))
    eps = n.get("clip_eps", 0.2)
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


_VALUE_AXIS = {
    "min instead of max": "1/2 min(...) of the clipped and unclipped errors: optimistic, the clip never binds "
    "(openai/baselines #765, ray #19291)",
    "no value clip": "1/2 (V - R)^2 without clipping (clip_eps=None)",
    "no 1/2 factor": "max(...) without the factor 1/2",
    "clipped term only": "1/2 (V_old + clip(V - V_old) - R)^2 alone",
}


def _value_loss_variants() -> list[Variant]:
    out: list[Variant] = []

    def agg_axes(c: Case) -> list[_AggAxis]:
        return _agg_axis(c.kwargs.get("agg", "token-mean"), "agg")

    for variant, description in _VALUE_AXIS.items():

        def compute(c: Case, variant: str = variant) -> float:
            m = np.asarray(c.named()["mask"], dtype=bool)
            return _agg(_value_per_token(c, variant), m, c.kwargs.get("agg", "token-mean"), c.kwargs.get("max_tokens"))

        kwargs = {"clip_eps": None} if variant == "no value clip" else None
        out.append(Variant(variant, description, compute, kwargs))
    for agg_index in range(len(_agg_axis("token-mean", "agg"))):

        def compute_agg(c: Case, agg_index: int = agg_index) -> float:
            m = np.asarray(c.named()["mask"], dtype=bool)
            axis = agg_axes(c)[agg_index]
            return axis.fn(
                _value_per_token(c, "reference"), m, c.kwargs.get("agg", "token-mean"), c.kwargs.get("max_tokens")
            )

        out.append(_NamedLazy("", "", compute_agg, None, 1, None, agg_index, 1.0, agg_axes))
    return out


# ----------------------------------------------------------------------------------------------------------------
# KL


def _delta(c: Case) -> np.ndarray:
    n = c.named()
    return np.asarray(n["logp"], dtype=np.float64) - np.asarray(n["logp_ref"], dtype=np.float64)


def _k(kind: str, delta: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        if kind == "k1":
            return delta
        if kind == "k2":
            return np.asarray(0.5 * delta**2)
        return np.asarray(np.expm1(-delta) + delta)


def _kl_estimate_variants() -> list[Variant]:
    out: list[Variant] = []
    for kind in ("k1", "k2", "k3"):

        def same_kind(c: Case, kind: str = kind) -> np.ndarray:
            return _k(kind, _clamped(c, _delta(c)))

        def flipped(c: Case, kind: str = kind) -> np.ndarray:
            return _k(kind, -_clamped(c, _delta(c)))

        def negated(c: Case, kind: str = kind) -> np.ndarray:
            return -_k(kind, _clamped(c, _delta(c)))

        out.append(Variant(f"kind={kind!r}", f"the {kind} estimator", same_kind, {"kind": kind}))
        out.append(
            Variant(
                f"kind={kind!r} with the log-ratio flipped",
                f"{kind} of logp_ref - logp instead of logp - logp_ref (KL sign flipped)",
                flipped,
                deviations=2 if kind != "k1" else 1,
            )
        )
        out.append(Variant(f"-{kind}", f"minus the {kind} estimator", negated, deviations=2))

    def out_clamp(c: Case) -> np.ndarray:
        return np.asarray(np.clip(_k(c.kwargs.get("kind", "k1"), _clamped(c, _delta(c))), -10.0, 10.0))

    def in_clamp(c: Case) -> np.ndarray:
        return _k(c.kwargs.get("kind", "k1"), np.clip(_delta(c), -20.0, 20.0))

    def clamp_ignored(c: Case) -> np.ndarray:
        if c.kwargs.get("log_ratio_clamp") is None:
            raise NotImplementedError
        return _k(c.kwargs.get("kind", "k1"), _delta(c))

    out.append(Variant("output clamped to +-10", "the estimate clamped to [-10, 10] (OpenRLHF, verl)", out_clamp))
    out.append(
        Variant(
            "log_ratio_clamp ignored",
            "no clamp of the log-ratio before exp: exp(-Delta) overflows float32/bf16 beyond |Delta| = 88.7 "
            "(verl #891, OpenRLHF #525: clamp before exp, not after)",
            clamp_ignored,
        )
    )
    out.append(
        Variant(
            "log_ratio_clamp=20",
            "log-ratio clamped to [-20, 20] before the estimator (verl, OpenRLHF)",
            in_clamp,
            {"log_ratio_clamp": 20.0},
        )
    )
    return out


def _clamped(c: Case, delta: np.ndarray) -> np.ndarray:
    clamp = c.kwargs.get("log_ratio_clamp")
    return np.clip(delta, -clamp, clamp) if clamp is not None else delta


def _kl_exact_variants() -> list[Variant]:
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
        _negated(R.kl_exact, "-KL"),
        Variant("unnormalised logits", "sum p (z - z_ref): logits used as log-probabilities", raw),
    ]


def _score_slot(m: np.ndarray, position: str, trl_fallback: bool = True) -> list[int]:
    slots = []
    for b in range(m.shape[0]):
        valid = np.flatnonzero(m[b])
        last = int(valid[-1])
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
    kind = kind or n.get("kind", "k1")
    position = position or n.get("score_position", "last")
    delta = _delta(c)
    kl = _k(kind, -delta if flip else delta)
    out = _where(m, sign * float(n["beta"]) * kl)
    scores = np.asarray(n["scores"], dtype=np.float64)
    for b, slot in enumerate(_score_slot(m, position)):
        out[b, slot] += scores[b]
    return out


def _kl_shaped_rewards_variants() -> list[Variant]:
    out: list[Variant] = []
    for kind in ("k1", "k2", "k3"):
        out.append(
            Variant(
                f"kind={kind!r}",
                f"the {kind} estimator in the reward",
                functools.partial(_shaped, kind=kind),
                {"kind": kind},
            )
        )
        out.append(
            Variant(
                f"kind={kind!r} with the log-ratio flipped",
                f"{kind} of logp_ref - logp (KL sign flipped)",
                functools.partial(_shaped, kind=kind, flip=True),
            )
        )
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
    return out


def _rlhf_objective_variants() -> list[Variant]:
    def build(c: Case, *, beta_sign: float = -1.0, ptx_sign: float = -1.0, token_mean: bool = False) -> float:
        n = c.named()
        m = np.asarray(n["mask"], dtype=bool)
        lr = _where(m, _delta(c))
        per_seq = lr.sum(1)
        if token_mean:
            with np.errstate(all="ignore"):
                per_seq = per_seq / m.sum(1)
        value = float(np.mean(np.asarray(n["scores"]) + beta_sign * float(n["beta"]) * per_seq))
        gamma = float(n.get("gamma", 0.0))
        if gamma != 0.0:
            value += ptx_sign * gamma * R.ptx_loss(n["ptx_logp"], n["ptx_mask"])
        return value

    return [
        Variant(
            "KL penalty sign flipped",
            "+beta log(pi/pi_ref): the penalty rewards moving away",
            lambda c: build(c, beta_sign=1.0),
        ),
        Variant(
            "ptx term sign flipped",
            "+gamma L_ptx: the pretraining loss added instead of its log-likelihood",
            lambda c: build(c, ptx_sign=1.0),
        ),
        Variant(
            "per-token mean KL",
            "the KL term averaged over the sequence's tokens instead of summed",
            lambda c: build(c, token_mean=True),
        ),
        _negated(R.rlhf_objective, "the loss -J instead of the objective J"),
    ]


# ----------------------------------------------------------------------------------------------------------------
# reward model


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(-np.logaddexp(0.0, -np.asarray(x, dtype=np.float64)))


def _rm(c: Case, *, margin_sign: float = -1.0, swap: bool = False, reduce: str = "mean") -> float:
    n = c.named()
    ch, rj = np.asarray(n["chosen"], dtype=np.float64), np.asarray(n["rejected"], dtype=np.float64)
    if swap:
        ch, rj = rj, ch
    margin = n.get("margin")
    m = 0.0 if margin is None else np.asarray(margin, dtype=np.float64)
    losses = -_log_sigmoid(ch - rj + margin_sign * m)
    return float(losses.sum() if reduce == "sum" else losses.mean())


def _reward_model_variants() -> list[Variant]:
    return [
        Variant("margin sign flipped", "r_c - r_r + m", lambda c: _rm(c, margin_sign=1.0)),
        Variant("margin ignored", "margin dropped (OpenRLHF LogExpLoss)", lambda c: _rm(c, margin_sign=0.0)),
        Variant("chosen and rejected swapped", "-log sigmoid(r_r - r_c - m)", lambda c: _rm(c, swap=True)),
        Variant("sum over the batch", "sum instead of mean over the pairs", lambda c: _rm(c, reduce="sum")),
        _negated(R.reward_model_loss, "log sigmoid(...) (the log-likelihood, not the loss)"),
    ]


def _ranking(c: Case, *, norm: str = "binom", reverse: bool = False, reduce: str = "mean", pairs: str = "all") -> float:
    r = np.asarray(c.args[0], dtype=np.float64)
    if reverse:
        r = r[:, ::-1]
    k = r.shape[1]
    totals = []
    for row in r:
        if pairs == "softmax":
            z = row - row.max()
            totals.append(-(z[0] - np.log(np.exp(z).sum())))
            continue
        index = [(i, i + 1) for i in range(k - 1)] if pairs == "adjacent" else list(itertools.combinations(range(k), 2))
        s = float(sum(-_log_sigmoid(np.asarray(row[i] - row[j])) for i, j in index))
        divisor = {"binom": math.comb(k, 2), "half": k / 2, "none": 1.0, "pairs": len(index)}[norm]
        totals.append(s / divisor)
    return float(np.sum(totals) if reduce == "sum" else np.mean(totals))


def _ranking_variants() -> list[Variant]:
    return [
        Variant(
            "K/2 normaliser",
            "1/(K/2) instead of 1/C(K,2) (the seed's wording; off by a factor K-1)",
            lambda c: _ranking(c, norm="half"),
        ),
        Variant("no normaliser", "the sum over the C(K,2) pairs, not their mean", lambda c: _ranking(c, norm="none")),
        Variant("rows read worst to best", "columns in reverse order", lambda c: _ranking(c, reverse=True)),
        Variant("sum over the batch", "sum instead of mean over prompts", lambda c: _ranking(c, reduce="sum")),
        Variant(
            "adjacent pairs only",
            "only the K-1 neighbouring comparisons",
            lambda c: _ranking(c, pairs="adjacent", norm="pairs"),
        ),
        Variant(
            "K-way softmax cross-entropy",
            "-log softmax(r)[best] (lm-human-preferences PickBest)",
            lambda c: _ranking(c, pairs="softmax"),
        ),
        _negated(R.ranking_loss, "the log-likelihood instead of the loss"),
    ]


# ----------------------------------------------------------------------------------------------------------------
# advantages


def _gae_np(c: Case, variant: str) -> tuple[np.ndarray, np.ndarray]:
    n = c.named()
    r, v = np.asarray(n["rewards"], dtype=np.float64), np.asarray(n["values"], dtype=np.float64)
    m = np.asarray(n["mask"], dtype=bool)
    gamma, lam = float(n.get("gamma", 1.0)), float(n.get("lam", 0.95))
    if variant == "gamma and lam swapped":
        gamma, lam = lam, gamma
    adv = np.zeros_like(r)
    with np.errstate(all="ignore"):
        for b in range(r.shape[0]):
            if variant in ("zero-filled holes", "unmasked"):
                rb = r[b] if variant == "unmasked" else _where(m[b], r[b])
                vb = v[b] if variant == "unmasked" else _where(m[b], v[b])
                positions: list[int] = list(range(r.shape[1]))
            else:
                rb, vb = r[b], v[b]
                positions = [int(t) for t in np.flatnonzero(m[b])]
            next_v, next_a = 0.0, 0.0
            if variant == "bootstrap past the end" and positions and positions[-1] + 1 < r.shape[1]:
                next_v = float(v[b, positions[-1] + 1])
            for t in reversed(positions):
                delta = rb[t] + gamma * next_v - vb[t]
                next_a = delta + gamma * lam * next_a
                adv[b, t] = next_a
                next_v = vb[t]
    adv = _where(m, adv)
    return adv, _where(m, adv + v)


def _gae_variants() -> list[Variant]:
    described = {
        "zero-filled holes": "masked positions zero-filled but not skipped: the recursion runs through the holes "
        "with r = V = 0 there (TRL/OpenRLHF-style masking applied to multi-turn masks; verl PR #2337)",
        "unmasked": "masked rewards/values used as if valid (ROLL PR #447: unmasked V passed to GAE)",
        "bootstrap past the end": "V after the last valid token read from the next (pad) slot instead of 0 "
        "(DS-Chat PR #672 off-by-one)",
        "gamma and lam swapped": "gamma and lambda exchanged",
    }
    return [Variant(name, d, functools.partial(_by_name, _gae_np, name)) for name, d in described.items()]


def _whiten_np(c: Case, variant: str) -> np.ndarray:
    n = c.named()
    x, m = np.asarray(n["x"], dtype=np.float64), np.asarray(n["mask"], dtype=bool)
    shift_mean, unbiased = bool(n.get("shift_mean", True)), bool(n.get("unbiased", True))
    eps = float(n.get("eps", 1e-8))
    with np.errstate(all="ignore"):
        if variant == "pads in the statistics":
            vals = x.reshape(-1)
            mu, var = vals.mean(), vals.var(ddof=1 if unbiased else 0)
            out = (x - mu) / np.sqrt(var + eps)
            return _where(m, out + (0 if shift_mean else mu))
        if variant == "per-row statistics":
            out = np.zeros_like(x)
            for b in range(x.shape[0]):
                vals = x[b][m[b]]
                mu, var = vals.mean(), vals.var(ddof=1 if unbiased else 0)
                out[b] = (x[b] - mu) / np.sqrt(var + eps) + (0 if shift_mean else mu)
            return _where(m, out)
        vals = x[m]
        mu, var = vals.mean(), vals.var(ddof=1 if unbiased else 0)
        if variant == "x / sigma":
            return _where(m, x / np.sqrt(var + eps))
        if variant == "eps outside the sqrt":
            return _where(m, (x - mu) / (np.sqrt(var) + eps) + (0 if shift_mean else mu))
    raise NotImplementedError(variant)


def _whiten_variants() -> list[Variant]:
    out = [
        _convention(R.whiten, "unbiased", False, "population variance (lm-human-preferences tf.nn.moments, OpenRLHF)"),
        _convention(R.whiten, "unbiased", True, "Bessel-corrected variance (TRL, verl masked_whiten)"),
        _convention(R.whiten, "shift_mean", False, "(x - mu)/sigma + mu: the mean kept (TRL whiten_rewards)"),
        _convention(R.whiten, "shift_mean", True, "(x - mu)/sigma"),
    ]
    described = {
        "x / sigma": "x / sigma for shift_mean=False (THUDM/slime #1369)",
        "pads in the statistics": "mean and variance over all B*T positions, pads included",
        "per-row statistics": "mean and variance per row instead of over the batch",
        "eps outside the sqrt": "(x - mu) / (sigma + eps)",
    }
    out += [Variant(name, d, functools.partial(_by_name, _whiten_np, name)) for name, d in described.items()]
    return out


def _grpo_np(c: Case, variant: str) -> np.ndarray:
    n = c.named()
    s = np.asarray(n["scores"], dtype=np.float64)
    g = int(n["group_size"])
    std_normalize, unbiased = bool(n.get("std_normalize", True)), bool(n.get("unbiased", True))
    eps = float(n.get("eps", 1e-6))
    groups = s.reshape(-1, g) if variant != "strided groups" else s.reshape(g, -1).T
    mean = groups.mean(1, keepdims=True)
    ddof = 1 if unbiased else 0
    with np.errstate(all="ignore"):
        if variant == "batch std":
            std = s.std(ddof=ddof)
        elif variant == "eps inside the sqrt":
            std = np.sqrt(groups.var(1, ddof=ddof, keepdims=True) + eps) - eps
        else:
            std = groups.std(1, ddof=ddof, keepdims=True)
        adv = (groups - mean) / (std + eps) if std_normalize else groups - mean
    flat = adv.reshape(-1) if variant != "strided groups" else adv.T.reshape(-1)
    mask = n.get("mask")
    if mask is None:
        return np.asarray(flat)
    return _where(np.asarray(mask, dtype=bool), flat[:, None])


def _grpo_variants() -> list[Variant]:
    out = [
        _convention(R.grpo_advantages, "unbiased", False, "population std"),
        _convention(R.grpo_advantages, "unbiased", True, "Bessel-corrected std (torch.std: verl, TRL)"),
        _convention(R.grpo_advantages, "std_normalize", False, "mean-centred only (Dr. GRPO)"),
        _convention(R.grpo_advantages, "std_normalize", True, "normalised by the group std (DeepSeekMath)"),
    ]
    described = {
        "strided groups": "row i in group i mod n_groups instead of consecutive blocks",
        "batch std": "group mean but batch std (TRL scale_rewards='batch')",
        "eps inside the sqrt": "sqrt(var + eps) instead of std + eps",
    }
    out += [Variant(name, d, functools.partial(_by_name, _grpo_np, name)) for name, d in described.items()]
    return out


def _adaptive_variants() -> list[Variant]:
    def build(c: Case, *, clip: bool = True, scale: bool = True) -> float:
        beta, kl, target, n_steps, horizon = c.args
        e = kl / target - 1.0
        if clip:
            e = min(max(e, -0.2), 0.2)
        return float(beta * (1.0 + e * (n_steps / horizon if scale else 1.0)))

    return [
        Variant("error not clipped", "e = KL/target - 1 without the +-0.2 clip", lambda c: build(c, clip=False)),
        Variant("n_steps/horizon ignored", "beta (1 + e): one full step per update", lambda c: build(c, scale=False)),
    ]


def _logprob_variants(fn: Callable[..., Any], what: str) -> list[Variant]:
    def no_temp(c: Case) -> Any:
        return fn(*c.args, **_kw(c, temperature=1.0))

    def times_temp(c: Case) -> Any:
        return fn(*c.args, **_kw(c, temperature=1.0 / float(c.kwargs.get("temperature", 1.0))))

    out = [
        Variant("temperature ignored", "logits not divided by the temperature", no_temp),
        Variant("logits multiplied by the temperature", "z * T instead of z / T", times_temp),
        _negated(fn, f"minus the {what}"),
    ]
    if fn is R.token_logprobs:
        out.append(
            Variant("probabilities", "pi(o_t) instead of log pi(o_t)", lambda c: np.exp(fn(*c.args, **c.kwargs)))
        )
    else:
        out.append(
            Variant("in bits", "log2 instead of the natural log", lambda c: fn(*c.args, **c.kwargs) / math.log(2))
        )
    return out


VARIANTS: dict[str, list[Variant]] = {
    "token_logprobs": _logprob_variants(R.token_logprobs, "log-probability (the NLL)"),
    "entropy_from_logits": _logprob_variants(R.entropy_from_logits, "entropy"),
    "ppo_clip_objective": _ppo_objective_variants(),
    "ppo_clip_grad": _ppo_grad_variants(),
    "aggregate": _aggregate_like_variants(
        "aggregate", R.aggregate, "seq-mean-token-mean", "mode", lambda c: np.asarray(c.args[0], dtype=np.float64)
    ),
    "policy_loss": _policy_loss_variants(),
    "kl_estimate": _kl_estimate_variants(),
    "kl_exact": _kl_exact_variants(),
    "kl_shaped_rewards": _kl_shaped_rewards_variants(),
    "rlhf_objective": _rlhf_objective_variants(),
    "ptx_loss": _aggregate_like_variants(
        "ptx_loss", R.ptx_loss, "token-mean", "agg", lambda c: np.asarray(c.args[0], dtype=np.float64)
    ),
    "reward_model_loss": _reward_model_variants(),
    "ranking_loss": _ranking_variants(),
    "gae": _gae_variants(),
    "whiten": _whiten_variants(),
    "value_loss": _value_loss_variants(),
    "adaptive_kl_update": _adaptive_variants(),
    "grpo_advantages": _grpo_variants(),
}
"""Formula id -> its known variants (conventions and bug classes)."""


def resolve(variant: Variant, case: Case) -> Variant:
    """The variant with its name and description filled in for ``case`` (composed variants depend on the
    current aggregation mode)."""
    if isinstance(variant, _NamedLazy):
        return variant.resolve(case)
    return variant
