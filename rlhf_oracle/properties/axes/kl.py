"""The KL-estimator axis, shared by ``kl_estimate``, ``kl_loss`` and ``kl_shaped_rewards`` (and through them
the demo): the estimators k1/k2/k3 of Schulman 2020 and abs (their names read from
:data:`rlhf_oracle.reference.KL_ESTIMATORS`), the log-ratio clamp, the magnitude the tolerance scales by, and the
variants the diagnosis names (another kind, the log-ratio flipped, the estimate negated, k2 without 1/2, clamps of
the log-ratio or of the output, the output clamp ignored)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rlhf_oracle import reference as R

from ..cases import Case
from ..variants import Variant, fit_constant, fmt, unused
from .ppo import CLAMP_GRID

__all__ = [
    "DRAW_ORDER",
    "KINDS",
    "KLVariant",
    "clamped",
    "delta",
    "estimator",
    "out_clamped",
    "scale",
    "slope",
    "variants",
]

KINDS: tuple[str, ...] = R.KL_ESTIMATORS
"""The estimator kinds, read from the reference."""
DRAW_ORDER: tuple[str, ...] = ("k3", *(k for k in KINDS if k != "k3"))
"""The kinds in the order the strategies sample them: k3 first, the kind whose ``exp`` makes the extreme regime
(hypothesis favours the first choices, and a search of 60 examples must still reach it)."""


def delta(c: Case) -> np.ndarray:
    """The log-ratio logp - logp_ref of the case."""
    n = c.named()
    return np.asarray(n["logp"], dtype=np.float64) - np.asarray(n["logp_ref"], dtype=np.float64)


def estimator(kind: str, d: np.ndarray) -> np.ndarray:
    """k1 = Delta, k2 = Delta^2 / 2, k3 = e^-Delta - 1 + Delta, abs = |Delta|."""
    with np.errstate(all="ignore"):
        if kind == "k1":
            return d
        if kind == "k2":
            return np.asarray(0.5 * d**2)
        if kind == "abs":
            return np.asarray(np.abs(d))
        return np.asarray(np.expm1(-d) + d)


def slope(kind: str, d: np.ndarray) -> np.ndarray:
    """d estimator / d Delta: 1, Delta, 1 - e^-Delta, sign(Delta) (abs: 0 at Delta = 0, both sides +-1)."""
    with np.errstate(over="ignore"):
        return np.asarray({"k1": np.ones_like(d), "k2": d, "k3": -np.expm1(-d), "abs": np.sign(d)}[kind])


def out_clamped(c: Case, value: np.ndarray) -> np.ndarray:
    """``value`` clamped to the case's ``output_clamp`` (if any)."""
    bound = c.arg("output_clamp", absent=None)
    return np.asarray(np.clip(value, -bound, bound)) if bound is not None else value


def clamped(c: Case, d: np.ndarray) -> np.ndarray:
    """``d`` clamped to the case's ``log_ratio_clamp`` (if any)."""
    clamp = c.arg("log_ratio_clamp", absent=None)
    return np.clip(d, -clamp, clamp) if clamp is not None else d


def scale(c: Case, logp: np.ndarray, logp_ref: np.ndarray) -> np.ndarray:
    """The size of the estimator's terms: |Delta| (k1), Delta^2 (k2), (1 + |Delta|)(1 + e^-Delta) for k3 (terms
    of size 1 cancel near Delta = 0; exp amplifies the error of Delta)."""
    d = clamped(c, logp - logp_ref)
    kind = c.arg("kind")
    if kind in ("k1", "abs"):
        return np.asarray(np.abs(d))
    if kind == "k2":
        return np.asarray(d**2)
    with np.errstate(over="ignore"):
        big = np.exp(np.minimum(-d, 700.0))
    return np.asarray((1.0 + np.abs(d)) * (1.0 + big))


FORMS = {
    "flipped": "{kind} of logp_ref - logp instead of logp - logp_ref (KL sign flipped)",
    "negated": "minus the {kind} estimator",
    "no half": "(logp - logp_ref)^2 without the 1/2 of k2",
    "linear sign": "r - 1 + log r instead of k3 = r - 1 - log r (r = pi_ref/pi): the sign of the linear term "
    "flipped, e.g. exp(d) - 1 + d with d = logp_ref - logp; no longer >= 0 nor an estimator of KL",
}


@dataclass(frozen=True)
class KLVariant(Variant):
    """A KL estimator variant: the estimator (k1/k2/k3 or a form), optionally with the log-ratio clamped before it
    and/or its output clamped, with both bounds fitted to the candidate's output."""

    kind: str = "k1"
    form: str = ""
    in_clamp: bool = False
    out_clamp: bool = False

    def evaluate(self, c: Case, in_bound: float | None, out_bound: float | None, follow: bool = False) -> np.ndarray:
        """The variant on ``c``; ``follow``: use the case's own estimator (a clamp-only variant)."""
        kind = c.arg("kind") if follow else self.kind
        d = delta(c)
        if in_bound is not None:
            d = np.clip(d, -in_bound, in_bound)
        elif not self.in_clamp and self.form != "clamp ignored":
            d = clamped(c, d)
        with np.errstate(all="ignore"):
            if self.form == "flipped":
                value = estimator(kind, -d)
            elif self.form == "negated":
                value = -estimator(kind, d)
            elif self.form == "no half":
                value = d**2
            elif self.form == "linear sign":
                value = np.exp(-d) - 1.0 - d
            else:
                value = estimator(kind, d)
        if out_bound is not None:
            return np.asarray(np.clip(value, -out_bound, out_bound))
        return value if self.out_clamp or self.form == "output clamp ignored" else out_clamped(c, value)

    def resolve(self, case: Case, actual: list[np.ndarray] | None = None) -> Variant:
        if self.form == "clamp ignored" and case.arg("log_ratio_clamp") is None:
            raise NotImplementedError
        if self.form == "linear sign" and case.arg("kind") != "k3":
            raise NotImplementedError
        if self.form == "output clamp ignored" and case.arg("output_clamp", absent=None) is None:
            raise NotImplementedError
        in_bound: float | None = None
        out_bound: float | None = None
        if (self.in_clamp or self.out_clamp) and actual is None:
            raise NotImplementedError
        if self.out_clamp:
            assert actual is not None
            data = [float(x) for x in np.unique(np.abs(actual[0][np.isfinite(actual[0])]))[-3:]]
            out_bound = fit_constant(lambda cs, b: self.evaluate(cs, None, b), case, actual, CLAMP_GRID + data)
            if out_bound is None:
                raise NotImplementedError
        if self.in_clamp:
            assert actual is not None
            in_bound = fit_constant(lambda cs, b: self.evaluate(cs, b, out_bound), case, actual, CLAMP_GRID)
            if in_bound is None:
                raise NotImplementedError
        current = case.arg("kind")
        deviations = self.deviations
        parts: list[str] = []
        text: list[str] = []
        kwargs: dict[str, Any] | None = None
        if self.form in ("flipped", "negated"):
            parts.append(
                f"kind={self.kind!r} " + ("with the log-ratio flipped" if self.form == "flipped" else "negated")
            )
            text.append(FORMS[self.form].format(kind=self.kind))
        elif self.form == "no half":
            parts.append("k2 without the 1/2")
            text.append(FORMS[self.form])
        elif self.form == "linear sign":
            parts.append("k3 with its linear term's sign flipped")
            text.append(FORMS[self.form])
        elif self.form == "clamp ignored":
            parts.append("log_ratio_clamp ignored")
            text.append(
                "no clamp of the log-ratio before exp: exp(-Delta) overflows float32/bf16 beyond |Delta| = 88.7 "
                "(verl #891, OpenRLHF #525: clamp before exp, not after)"
            )
        elif self.form == "output clamp ignored":
            parts.append("output_clamp ignored")
            text.append("the estimate not clamped to [-output_clamp, output_clamp]: beyond it the KL keeps growing")
        else:
            deviations = int(self.kind != current) + self.in_clamp + self.out_clamp
            if deviations == 0:
                raise NotImplementedError  # the reference itself
            kwargs = {}
            if self.kind != current:
                parts.append(f"kind={self.kind!r}")
                text.append(f"the {self.kind} estimator")
                kwargs["kind"] = self.kind
        if in_bound is not None:
            parts.append(f"log-ratio clamp at {fmt(in_bound)}")
            text.append(
                f"log-ratio clamped to [-{fmt(in_bound)}, {fmt(in_bound)}] before the estimator (verl, OpenRLHF: 20)"
            )
            if kwargs is not None:
                kwargs["log_ratio_clamp"] = in_bound
        if out_bound is not None:
            parts.append(f"output clamp at +-{fmt(out_bound)}")
            text.append(
                f"the estimate clamped to [-{fmt(out_bound)}, {fmt(out_bound)}] (OpenRLHF compute_approx_kl clamps "
                "every estimator to +-10; verl low_var_kl too): beyond it the KL and its gradient are cut off"
            )
            kwargs = None
        follow = (self.form == "" and self.kind == current) or self.form == "output clamp ignored"
        return Variant(" + ".join(parts), "; ".join(text),
                       lambda cs: self.evaluate(cs, in_bound, out_bound, follow), kwargs or None,
                       deviations)  # fmt: skip


def variants() -> list[Variant]:
    """Every estimator variant of ``kl_estimate``."""
    out: list[Variant] = []
    for kind in KINDS:
        for in_clamp in (False, True):
            for out_clamp in (False, True):
                # the kind counts as a deviation only when it differs from the case's (decided at resolve time;
                # here 1 + clamps is an upper bound, used for ranking the matches)
                out.append(KLVariant("", "", unused, None, 1 + in_clamp + out_clamp, kind, "", in_clamp, out_clamp))
        if kind != "abs":  # |-Delta| = |Delta|: flipping the log-ratio of abs is abs itself
            out.append(KLVariant("", "", unused, None, 2 if kind != "k1" else 1, kind, "flipped"))
        out.append(KLVariant("", "", unused, None, 2, kind, "negated"))
    out.append(KLVariant("", "", unused, None, 1, "k2", "no half"))
    out.append(KLVariant("", "", unused, None, 1, "k3", "linear sign"))
    out.append(KLVariant("", "", unused, None, 1, "k3", "clamp ignored"))
    out.append(KLVariant("", "", unused, None, 1, "k1", "output clamp ignored"))
    return out
