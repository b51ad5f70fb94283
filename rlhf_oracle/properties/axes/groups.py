"""Groups of samples per prompt, returns-to-go and the whitening readings: what the critic-free families share.

Groups are consecutive blocks of ``group_size`` rows (the G samples of a prompt are adjacent), as in the reference.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rlhf_oracle import reference as R

from ..cases import Draw, advantages_like

__all__ = ["WHITENINGS", "draw_group_size", "group_scores", "returns_to_go", "whiten_by"]


def group_scores(draw: Draw, b: int, group_size: int) -> np.ndarray:
    """Scores of ``b`` samples in groups: verifiable 0/1 (often one value per group), real, or groups of one
    repeated value (the all-equal group that carries no gradient)."""
    kind = draw(st.sampled_from(["binary", "real", "equal groups"]))
    if kind == "binary":
        return np.asarray(draw(hnp.arrays(np.float64, (b,), elements=st.sampled_from([0.0, 1.0]))))
    s = np.asarray(draw(advantages_like((b,))))
    if kind == "equal groups":
        groups = s.reshape(-1, group_size)
        same = np.asarray(draw(hnp.arrays(np.bool_, (groups.shape[0],))))
        groups = np.where(same[:, None], groups[:, :1], groups)
        s = groups.reshape(-1)
    return s


def draw_group_size(draw: Draw, allow_one: bool) -> int:
    return int(draw(st.integers(1 if allow_one else 2, 5)))


def returns_to_go(x: np.ndarray, m: np.ndarray, gamma: float) -> np.ndarray:
    """The return-to-go of ``x`` over the valid tokens (of ``|x|``: the size of the terms each return sums): the
    reference's GAE with V = 0 and lambda = 1."""
    return np.asarray(R.gae(x, np.zeros_like(x), m, gamma=gamma, lam=1.0).advantages)


WHITENINGS = {
    "+1e-8 in the count (verl masked_whiten)": "mean and variance divided by n + 1e-8 (verl masked_mean inside "
    "masked_whiten), Bessel factor n/(n - 1): a relative change of about 1e-8/n",
    "variance floored at 1e-8 (OpenRLHF)": "population variance, var.clamp(min=1e-8).rsqrt() instead of + eps inside "
    "the sqrt",
    "statistics in float32, variance floored (OpenRLHF)": "mean and population variance of the values cast to "
    "float32 (OpenRLHF's torch.cat(...).float(): the statistics off by float32 roundings), "
    "clamp(min=1e-8).rsqrt(), applied to the float64 values",
    "not centred": "divided by the batch std but the mean not subtracted",
}
"""The ways frameworks whiten over the batch's valid tokens that differ from the reference's
(x - mu) / sqrt(var + eps); what :func:`whiten_by` computes for each."""


def whiten_by(x: np.ndarray, m: np.ndarray, how: str, unbiased: bool, eps: float) -> np.ndarray:
    """``x`` whitened over its valid tokens the reference's way (``how=""``) or one of :data:`WHITENINGS`; 0 at
    masked positions."""
    vals = x[m]
    k = vals.size
    with np.errstate(all="ignore"):
        if how == "+1e-8 in the count (verl masked_whiten)":
            mu = vals.sum() / (k + 1e-8)
            var = ((vals - mu) ** 2).sum() / (k + 1e-8) * (k / (k - 1) if unbiased else 1.0)
            out = (x - mu) / np.sqrt(var + eps)
        elif how == "variance floored at 1e-8 (OpenRLHF)":
            out = (x - vals.mean()) / np.sqrt(max(vals.var(), 1e-8))
        elif how == "statistics in float32, variance floored (OpenRLHF)":
            # OpenRLHF: the values cast to float32; mean and variance summed in float64 (times the float mask),
            # the differences to the mean squared in float32 (a 0-dim float64 mean does not promote them)
            v32 = vals.astype(np.float32)
            mu = float(v32.astype(np.float64).sum()) / k
            d32 = v32 - np.float32(mu)
            var = float((d32 * d32).astype(np.float64).sum()) / k
            out = (x - mu) / np.sqrt(max(var, 1e-8))
        elif how == "not centred":
            out = x / np.sqrt(vals.var(ddof=1 if unbiased else 0) + eps)
        else:
            out = (x - vals.mean()) / np.sqrt(vals.var(ddof=1 if unbiased else 0) + eps)
    return np.asarray(np.where(m, out, 0.0))
