"""Advantages: generalised advantage estimation, whitening, and GRPO's group-normalised advantages."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from . import _validation as v
from ._validation import FloatArray


class GAEResult(NamedTuple):
    """Output of :func:`gae`: both [B, T], 0 at masked positions."""

    advantages: FloatArray
    returns: FloatArray


def gae(rewards: Any, values: Any, mask: Any, gamma: float = 1.0, lam: float = 0.95) -> GAEResult:
    r"""Generalised advantage estimation over the valid tokens of each sequence.

    .. math::

        \delta_t = r_t + \gamma V(s_{t+1}) - V(s_t), \qquad
        \hat A_t = \sum_{l=0}^{T-t-1} (\gamma\lambda)^l \,\delta_{t+l}
                 = \delta_t + \gamma\lambda\, \hat A_{t+1}, \qquad
        \hat R_t = \hat A_t + V(s_t)

    Source: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation",
    eq. 16; the truncated form of Schulman et al. 2017 eqs. 11-12 (whose printed exponent T-t+1 is a typo for
    T-t-1). InstructGPT uses gamma = 1 ("no discount"); lambda = 0.95 is the lm-human-preferences default.

    Shapes: ``rewards``, ``values``, ``mask`` [B, T] -> :class:`GAEResult` (advantages, returns), both [B, T].

    Conventions:
        - Notation: position t of the arrays is the t-th *valid* token of the row. The recursion runs over valid
          positions only, skipping masked ones (multi-turn observation tokens, as verl's masked GAE does): the
          result on a row with holes equals the result on the same row with the holes removed.
        - No bootstrap: the value after the last valid token is 0 (the response ended or was truncated; all
          surveyed frameworks treat truncation as termination).
        - Rewards and values at masked positions are ignored; both outputs are exactly 0 there.
        - An empty row is legal (all zeros). ``gamma`` and ``lam`` are in [0, 1].
    """
    fn = "gae"
    r = v.as_float(fn, "rewards", rewards, ndim=2, shape_doc="[B, T]")
    val = v.as_float(fn, "values", values)
    v.same_shape(fn, "values", val, "rewards", r)
    m = v.as_mask(fn, mask, like=r, like_name="rewards")
    g = v.unit_interval(fn, "gamma", gamma)
    lm = v.unit_interval(fn, "lam", lam)
    v.finite(fn, "rewards", r, m)
    v.finite(fn, "values", val, m)

    batch, _ = r.shape
    advantages = np.zeros_like(r)
    returns = np.zeros_like(r)
    for b in range(batch):
        positions = np.flatnonzero(m[b])  # valid positions, in order
        next_value = 0.0  # V after the last valid token: no bootstrap
        next_advantage = 0.0
        for t in reversed(positions):
            delta = r[b, t] + g * next_value - val[b, t]
            advantage = delta + g * lm * next_advantage
            advantages[b, t] = advantage
            returns[b, t] = advantage + val[b, t]
            next_value = val[b, t]
            next_advantage = advantage
    return GAEResult(advantages, returns)


def whiten(x: Any, mask: Any, shift_mean: bool = True, unbiased: bool = True, *, eps: float = 1e-8) -> FloatArray:
    r"""Masked standardisation over all valid positions of the batch.

    .. math::

        \mu = \frac{\sum m x}{\sum m}, \quad
        \sigma^2 = \frac{\sum m (x - \mu)^2}{\sum m - c}, \quad
        w = \frac{x - \mu}{\sqrt{\sigma^2 + \varepsilon}} \;\; (+\mu \text{ if not shift\_mean})

    with c = 1 (Bessel) when ``unbiased`` else c = 0.

    Source: common RLHF practice; ``whiten`` in openai/lm-human-preferences (``utils/core.py``), TRL's and verl's
    ``masked_whiten``. Huang et al. (2023, "The N Implementation Details of RLHF with PPO") print a test vector.

    Shapes: ``x``, ``mask`` [B, T] -> [B, T], exactly 0 at masked positions.

    Conventions:
        - ``unbiased=True`` (default): Bessel-corrected variance, as TRL and verl. ``False``: population variance,
          as lm-human-preferences (``tf.nn.moments``) and OpenRLHF.
        - ``shift_mean=False`` returns :math:`(x - \mu)/\sigma + \mu` (the mean is kept, the spread normalised),
          the TRL / OpenAI convention for rewards; it is *not* :math:`x/\sigma` (THUDM/slime #1369).
        - ``eps = 1e-8`` inside the square root, as all of the above.
        - Statistics over the whole batch (a minibatch in lm-human-preferences; the rollout batch in TRL).
        - An empty mask is an error; with ``unbiased`` a single valid token is an error (n - 1 = 0); identical
          values with ``eps=0`` are an error (0 / 0), as in :func:`grpo_advantages`.
        - Mean and variance are exactly rounded sums (``math.fsum``): a mean that cancels (values of both signs)
          is as accurate as any implementation's, never the left-to-right rounding of a naive sum.
    """
    fn = "whiten"
    shift_mean = v.flag(fn, "shift_mean", shift_mean)
    unbiased = v.flag(fn, "unbiased", unbiased)
    xs = v.as_float(fn, "x", x, ndim=2, shape_doc="[B, T]")
    m = v.as_mask(fn, mask, like=xs, like_name="x")
    e = v.non_negative(fn, "eps", eps)
    v.finite(fn, "x", xs, m)
    v.not_empty(fn, m)
    n = int(m.sum())
    if unbiased and n < 2:
        raise ValueError(f"{fn}: 'mask' has {n} valid token; unbiased variance needs at least 2")

    valid = xs[m]
    mean = math.fsum(valid) / n
    var = math.fsum((valid - mean) ** 2) / (n - 1 if unbiased else n)
    if e == 0 and np.all(valid == valid[0]):  # (a rounded mean of identical values can leave var at 1e-33)
        raise ValueError(f"{fn}: the valid values of 'x' are identical and eps=0; pass 'eps' > 0")
    whitened = (xs - mean) / math.sqrt(var + e)
    if not shift_mean:
        whitened = whitened + mean
    out: FloatArray = np.where(m, whitened, 0.0)
    return out


STD_LEVELS = ("group", "batch")
"""Over which scores :func:`grpo_advantages` takes the standard deviation."""


def grpo_advantages(
    scores: Any,
    group_size: int,
    std_normalize: bool = True,
    *,
    mask: Any = None,
    eps: float = 1e-6,
    unbiased: bool = True,
    std_level: str = "group",
) -> FloatArray:
    r"""Group-relative outcome advantages of GRPO.

    .. math::

        \hat A_{i,t} = \frac{s_i - \mathrm{mean}(s_{g(i)})}{\mathrm{std}(s_{g(i)}) + \varepsilon}
        \quad \text{for every token } t \text{ of output } i

    Source: DeepSeekMath (Shao et al. 2024) §4.1.2, outcome supervision; ``std_normalize=False`` is Dr. GRPO's
    fix (Liu et al. 2025), which removes the question-level difficulty bias.

    Shapes: ``scores`` [B] with B = n_groups * group_size -> [B]; with ``mask`` [B, T] -> [B, T], the row's
    advantage broadcast over its valid tokens and 0 at masked positions.

    Conventions:
        - groups are consecutive blocks of ``group_size`` rows (the G samples of one prompt are adjacent), as the
          repeated-prompt batches of TRL and verl.
        - ``unbiased=True`` (default): Bessel-corrected std, as ``torch.std`` in verl and TRL (the paper does not
          say). ``eps=1e-6`` is verl's (TRL uses 1e-4). ``group_size >= 2``.
        - ``std_level="group"`` (default): the std of the group's scores. ``"batch"``: the group-centred scores
          divided by the std of the *raw* scores over the whole batch (TRL ``scale_rewards="batch"``, Liu et al.
          2025 "Lite PPO"); the batch variance is the mean within-group variance plus the variance of the group
          means (population form), so it is never below the group's on average. (REINFORCE++-baseline instead
          whitens the centred scores: :func:`reinforce_pp_baseline_advantages`.)
        - Group mean and variance are exactly rounded sums (``math.fsum``): scores of both signs whose mean
          cancels (e.g. [0, -2, 1, 8.48e-255, 1]) get the correctly rounded mean, not 0.
    """
    fn = "grpo_advantages"
    std_normalize = v.flag(fn, "std_normalize", std_normalize)
    unbiased = v.flag(fn, "unbiased", unbiased)
    s = v.as_float(fn, "scores", scores, ndim=1, shape_doc="[B]")
    group_size = v.group_size(fn, group_size, s.shape[0], 2)
    e = v.non_negative(fn, "eps", eps)
    std_level = v.choice(fn, "std_level", std_level, STD_LEVELS)
    v.finite(fn, "scores", s)

    batch_std = 0.0
    if std_level == "batch" and s.shape[0]:
        batch_mean = math.fsum(s) / s.shape[0]
        batch_std = math.sqrt(math.fsum((s - batch_mean) ** 2) / (s.shape[0] - 1 if unbiased else s.shape[0]))
    adv = np.zeros_like(s)
    for start in range(0, s.shape[0], group_size):
        group = s[start : start + group_size]
        mean = math.fsum(group) / group_size
        centred = group - mean
        if std_normalize:
            var = math.fsum(centred**2) / (group_size - 1 if unbiased else group_size)
            std = math.sqrt(var) if std_level == "group" else batch_std
            if std + e == 0.0:
                where = f"group {start // group_size} has" if std_level == "group" else "the batch has"
                raise ValueError(f"{fn}: {where} identical scores and eps=0; pass 'eps' > 0")
            adv[start : start + group_size] = centred / (std + e)
        else:
            adv[start : start + group_size] = centred
    if mask is None:
        return adv
    m = v.as_mask(fn, mask)
    if m.shape[0] != s.shape[0]:
        raise ValueError(
            f"{fn}: 'mask' has shape {v._shape_str(m.shape)}, expected ({s.shape[0]}, T) to match 'scores'"
        )
    out: FloatArray = np.where(m, adv[:, None], 0.0)
    return out
