"""Critic-free advantages: RLOO, REINFORCE++ (and its group baseline) and ReMax.

Each turns rewards into advantages without a value network. The conventions on which TRL, verl and OpenRLHF
disagree (groups of one, Bessel vs population variance, holes in the mask, where the KL enters) are keywords whose
default is the paper's; the docstrings say which framework uses which setting.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _validation as v
from ._validation import BoolArray, FloatArray
from .advantages import whiten

__all__ = [
    "KL_POSITIONS",
    "SINGLETON_RULES",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "remax_advantages",
    "rloo_advantages",
]

SINGLETON_RULES = ("error", "zero", "score")
"""What :func:`rloo_advantages` does with a group of one sample (no other sample to form a baseline)."""

KL_POSITIONS = ("after", "before")
"""Where :func:`reinforce_pp_baseline_advantages` adds the per-token KL rewards: after the group baseline (as a
return-to-go, OpenRLHF) or before it (summed into the score, verl)."""


def _row_mask(fn: str, mask: Any, n_rows: int) -> BoolArray:
    """``mask`` [B, T] with one row per score."""
    m = v.as_mask(fn, mask)
    if m.shape[0] != n_rows:
        raise ValueError(f"{fn}: 'mask' has shape {v._shape_str(m.shape)}, expected ({n_rows}, T) to match 'scores'")
    return m


def _broadcast(fn: str, per_row: FloatArray, mask: Any) -> FloatArray:
    """The row values over the valid tokens of ``mask`` [B, T]; 0 at masked positions."""
    m = _row_mask(fn, mask, per_row.shape[0])
    out: FloatArray = np.where(m, per_row[:, None], 0.0)
    return out


def _returns_to_go(rewards: FloatArray, mask: BoolArray, gamma: float) -> FloatArray:
    """G_t = r_t + gamma G_next over the valid tokens of each row (holes skipped, as in :func:`gae`); 0 at masked
    positions. The running return starts at 0 after the last valid token."""
    out = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        running = 0.0
        for t in reversed(np.flatnonzero(mask[b])):
            running = rewards[b, t] + gamma * running
            out[b, t] = running
    return out


def rloo_advantages(scores: Any, group_size: int, *, singleton: str = "error", mask: Any = None) -> FloatArray:
    r"""REINFORCE leave-one-out (RLOO) advantages: each sample's score minus the mean of the *other* samples of
    its group.

    .. math::

        \hat A_i = s_i - \frac{1}{n - 1} \sum_{j \ne i} s_j = \frac{n}{n - 1}\,(s_i - \bar s_g)

    Source: Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
    Human Feedback in LLMs", eq. 9 (RLOO); Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!".
    The baseline of sample i does not depend on sample i, so it keeps the policy gradient unbiased.

    Shapes: ``scores`` [B] with B = n_groups * group_size -> [B]; with ``mask`` [B, T] -> [B, T], the row's
    advantage broadcast over its valid tokens and 0 at masked positions.

    Conventions:
        - groups are consecutive blocks of ``group_size`` rows, as in :func:`grpo_advantages`.
        - ``singleton`` says what a group of one sample gets (``group_size=1``: no other sample, the baseline is
          0/0): ``"error"`` (default) refuses it, as OpenRLHF asserts n > 1; ``"zero"`` gives A = 0, as TRL's
          ``RLOOTrainer`` and verl's ``rloo_vectorized``; ``"score"`` gives A = s (the score unchanged), as
          verl's ``rloo``. The two verl estimators disagree.
        - Computed as the mean of the differences :math:`s_i - s_j` over the others, with an exactly rounded sum
          (``math.fsum``): no cancellation error, and exactly 0 for a group of equal scores.
        - No KL here: TRL puts beta times the sequence k1 into the score before the baseline; pass that score.
    """
    fn = "rloo_advantages"
    singleton = v.choice(fn, "singleton", singleton, SINGLETON_RULES)
    s = v.as_float(fn, "scores", scores, ndim=1, shape_doc="[B]")
    n = v.group_size(fn, group_size, s.shape[0], 1)
    v.finite(fn, "scores", s)
    if n == 1 and singleton == "error" and s.shape[0] > 0:
        raise ValueError(
            f"{fn}: 'group_size' is 1: a leave-one-out baseline needs 2 samples per group; pass singleton='zero' "
            "(TRL, verl rloo_vectorized) or singleton='score' (verl rloo)"
        )

    adv = np.zeros_like(s)
    for start in range(0, s.shape[0], n):
        for i in range(start, start + n):
            if n == 1:
                adv[i] = s[i] if singleton == "score" else 0.0
                continue
            # s_i - mean(others) = the mean over the others of (s_i - s_j), summed exactly (math.fsum of n - 1
            # copies of s_i and the -s_j): one rounding, and exactly 0 when the group's scores are all equal
            others = [s[j] for j in range(start, start + n) if j != i]
            adv[i] = math.fsum([s[i]] * (n - 1) + [-x for x in others]) / (n - 1)
    return adv if mask is None else _broadcast(fn, adv, mask)


def reinforce_pp_advantages(
    rewards: Any, mask: Any, gamma: float = 1.0, unbiased: bool = True, *, eps: float = 1e-8
) -> FloatArray:
    r"""REINFORCE++ advantages: the return-to-go of the per-token rewards, whitened over the whole batch.

    .. math::

        G_t = \sum_{t' \ge t} \gamma^{t' - t} r_{t'}, \qquad
        \hat A_t = \frac{G_t - \mu}{\sqrt{\sigma^2 + \varepsilon}}, \quad
        \mu, \sigma^2 \text{ over the valid tokens of the batch}

    Source: Hu 2025, "REINFORCE++: An Efficient RLHF Algorithm with Robustness to Both Prompt and Reward Models"
    (arXiv 2501.03262), §3: the token reward is the score at the last token minus the per-token KL penalty
    (pass it, e.g. from :func:`kl_shaped_rewards`); the advantage is normalised over the global batch.

    Shapes: ``rewards``, ``mask`` [B, T] -> [B, T], 0 at masked positions.

    Conventions:
        - The return runs over *valid* tokens: a hole (multi-turn observation tokens) is skipped, its reward
          ignored and the running return carried past it, as verl (``compute_reinforce_plus_plus_outcome_
          advantage``) and :func:`gae`. OpenRLHF multiplies the rewards by the mask and runs through the holes:
          the same for gamma = 1, discounted once more per hole otherwise.
        - Whitening as :func:`whiten` (shift_mean): ``unbiased=True`` (default) Bessel-corrected variance as verl's
          ``masked_whiten``; ``False`` population variance as OpenRLHF (which floors the variance at 1e-8,
          ``clamp(min=1e-8).rsqrt()``, instead of adding ``eps``). ``eps = 1e-8`` inside the square root.
        - ``gamma = 1`` (default, both frameworks and the paper); a single valid token with ``unbiased`` and an
          empty batch are errors (as :func:`whiten`).
    """
    fn = "reinforce_pp_advantages"
    r = v.as_float(fn, "rewards", rewards, ndim=2, shape_doc="[B, T]")
    m = v.as_mask(fn, mask, like=r, like_name="rewards")
    g = v.unit_interval(fn, "gamma", gamma)
    unbiased = v.flag(fn, "unbiased", unbiased)
    e = v.non_negative(fn, "eps", eps)
    v.finite(fn, "rewards", r, m)
    returns = _returns_to_go(r, m, g)
    return _whitened(fn, returns, m, unbiased, e)


def _whitened(fn: str, x: FloatArray, m: BoolArray, unbiased: bool, eps: float) -> FloatArray:
    """:func:`whiten` of ``x`` with ``fn``'s name in the messages."""
    try:
        return whiten(x, m, unbiased=unbiased, eps=eps)
    except ValueError as err:
        raise ValueError(str(err).replace("whiten:", f"{fn}:", 1)) from None


def reinforce_pp_baseline_advantages(
    scores: Any,
    group_size: int,
    mask: Any,
    unbiased: bool = True,
    *,
    eps: float = 1e-8,
    kl_rewards: Any = None,
    kl_position: str = "after",
) -> FloatArray:
    r"""REINFORCE++-baseline advantages: each score minus its group's mean, broadcast over the response's tokens,
    then whitened over the whole batch.

    .. math::

        \hat A_{i,t} = \mathrm{whiten}\Big(s_i - \bar s_{g(i)} + \sum_{t' \ge t} k_{i,t'}\Big), \qquad
        \bar s_g = \frac1n \sum_{j \in g} s_j

    with :math:`k` the optional per-token KL rewards (:math:`-\beta\,\mathrm{KL}_t`).

    Source: Hu 2025 (arXiv 2501.03262), REINFORCE++-baseline: the group mean removes the prompt's difficulty, the
    global whitening (not the group std of GRPO) sets the scale.

    Shapes: ``scores`` [B] (B = n_groups * group_size), ``mask`` [B, T], ``kl_rewards`` [B, T] or None -> [B, T],
    0 at masked positions.

    Conventions:
        - groups are consecutive blocks of ``group_size`` rows; a group of one gets s - s = 0 before whitening
          (OpenRLHF; verl keeps the score, taking its group mean as 0).
        - ``kl_position="after"`` (default): the KL rewards enter after the baseline as a return-to-go over the
          valid tokens (OpenRLHF, the paper author's implementation); ``"before"``: they are summed into the
          score, :math:`s_i + \sum_t k_{i,t}`, whose group mean is then removed (verl, whose scores are the sums of
          ``token_level_rewards``). The two agree when the KL rewards are 0.
        - Whitening over the valid tokens of the batch as :func:`whiten`: ``unbiased=True`` (default) Bessel, as
          verl; ``False`` population, as OpenRLHF. A long response counts once per token in the statistics.
    """
    fn = "reinforce_pp_baseline_advantages"
    unbiased = v.flag(fn, "unbiased", unbiased)
    kl_position = v.choice(fn, "kl_position", kl_position, KL_POSITIONS)
    s = v.as_float(fn, "scores", scores, ndim=1, shape_doc="[B]")
    n = v.group_size(fn, group_size, s.shape[0], 1)
    e = v.non_negative(fn, "eps", eps)
    v.finite(fn, "scores", s)
    m = _row_mask(fn, mask, s.shape[0])
    k = np.zeros(m.shape)
    if kl_rewards is not None:
        k = v.as_float(fn, "kl_rewards", kl_rewards, ndim=2, shape_doc="[B, T]")
        v.same_shape(fn, "kl_rewards", k, "mask", m)
        v.finite(fn, "kl_rewards", k, m)

    if kl_position == "before":
        s = np.array([s[i] + math.fsum(k[i][m[i]]) for i in range(s.shape[0])])
    centred = np.zeros_like(s)
    for start in range(0, s.shape[0], n):
        group = s[start : start + n]
        centred[start : start + n] = group - math.fsum(group) / n
    x = np.where(m, centred[:, None], 0.0)
    if kl_position == "after":
        x = x + _returns_to_go(k, m, 1.0)
    return _whitened(fn, x, m, unbiased, e)


def remax_advantages(rewards: Any, mask: Any, baseline_scores: Any) -> FloatArray:
    r"""ReMax advantages: the return-to-go of the per-token rewards minus the reward of the greedy response.

    .. math::

        \hat A_{i,t} = \sum_{t' \ge t} r_{i,t'} - b_i, \qquad b_i = r(x_i, \bar y_i),\;
        \bar y_i = \text{the greedy (argmax) decoding of prompt } i

    Source: Li et al. 2023, "ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for Aligning
    Large Language Models" (arXiv 2310.10505), Algorithm 1: the baseline is the reward of the greedy response to
    the same prompt; no discount, no normalisation.

    Shapes: ``rewards``, ``mask`` [B, T], ``baseline_scores`` [B] -> [B, T], 0 at masked positions.

    Conventions:
        - The return runs over valid tokens (holes skipped; with no discount the same as summing through them).
        - ``b_i`` is subtracted at every valid token of row i; the advantage is 0 at masked positions (verl's
          ``compute_remax_outcome_advantage`` leaves the reverse cumulative sum at a hole: not 0 there).
    """
    fn = "remax_advantages"
    r = v.as_float(fn, "rewards", rewards, ndim=2, shape_doc="[B, T]")
    m = v.as_mask(fn, mask, like=r, like_name="rewards")
    b = v.as_float(fn, "baseline_scores", baseline_scores, ndim=1, shape_doc="[B]")
    if b.shape[0] != r.shape[0]:
        raise ValueError(f"{fn}: 'baseline_scores' has shape {v._shape_str(b.shape)}, expected ({r.shape[0]},) to "
                         "match 'rewards'")  # fmt: skip
    v.finite(fn, "rewards", r, m)
    v.finite(fn, "baseline_scores", b)
    returns = _returns_to_go(r, m, 1.0)
    out: FloatArray = np.where(m, returns - b[:, None], 0.0)
    return out
