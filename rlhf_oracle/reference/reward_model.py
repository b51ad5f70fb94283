"""Reward-model losses: the pairwise Bradley-Terry loss and its K-ranked form."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _validation as v


def log_sigmoid(x: float) -> float:
    r""":math:`\log\sigma(x) = -\log(1 + e^{-x})`, written so that neither branch overflows."""
    if x >= 0:
        return -math.log1p(math.exp(-x))
    return x - math.log1p(math.exp(x))


def reward_model_loss(chosen: Any, rejected: Any, margin: Any = None) -> float:
    r"""Pairwise reward-model loss (Bradley-Terry), averaged over the batch.

    .. math::

        \mathcal{L}(\theta) = -\frac{1}{B}\sum_{b=1}^{B} \log\sigma\big(r_\theta(x_b, y_{w,b}) - r_\theta(x_b, y_{l,b})
        - m_b\big)

    Source: Ouyang et al. 2022 (InstructGPT) eq. 1, one comparison per element; the margin ``m`` is Llama 2's
    (Touvron et al. 2023, eq. 2), written ``r_c - r_r - m`` as in TRL and OpenRLHF.

    Shapes: ``chosen`` [B], ``rejected`` [B] (scalar rewards of the preferred and rejected answers);
    ``margin`` None, a float, or [B] -> float.

    Properties: :math:`\frac{d}{d\Delta}[-\log\sigma(\Delta)] = \sigma(\Delta) - 1`; the loss is unchanged when the
    same constant is added to both rewards; :math:`-\log\sigma(D) + \log\sigma(-D) = -D`.
    """
    fn = "reward_model_loss"
    c = v.as_float(fn, "chosen", chosen, ndim=1, shape_doc="[B]")
    r = v.as_float(fn, "rejected", rejected)
    v.same_shape(fn, "rejected", r, "chosen", c)
    if c.shape[0] == 0:
        raise ValueError(f"{fn}: 'chosen' must have shape [B] with B >= 1, got (0,)")
    if margin is None:
        m = np.zeros_like(c)
    else:
        is_number = isinstance(margin, int | float) and not isinstance(margin, bool)
        m = np.asarray(margin, np.float64) if is_number else v.as_float(fn, "margin", margin)
        if m.ndim == 0:
            m = np.full_like(c, float(m))
        v.same_shape(fn, "margin", m, "chosen", c)
    v.finite(fn, "chosen", c)
    v.finite(fn, "rejected", r)
    v.finite(fn, "margin", m)
    losses = [-log_sigmoid(float(c[b] - r[b] - m[b])) for b in range(c.shape[0])]
    return float(sum(losses) / len(losses))


def ranking_loss(rewards: Any) -> float:
    r"""Reward-model loss over K ranked answers per prompt, normalised by the number of comparisons.

    .. math::

        \mathcal{L}(\theta) = -\frac{1}{B}\sum_{b=1}^{B} \frac{1}{\binom{K}{2}} \sum_{1 \le i < j \le K}
        \log\sigma\big(r_{b,i} - r_{b,j}\big)

    Source: Ouyang et al. 2022 (InstructGPT) eq. 1: labelers rank K = 4..9 answers, which gives
    :math:`\binom K2` comparisons, and all of them are trained as a single batch element.

    Note on the normaliser: the seed text writes it as 1/(K/2). The paper's normaliser is the binomial
    :math:`1/\binom{K}{2} = 2/(K(K-1))`, the number of pairs, which makes the loss the *mean* pairwise loss of the
    prompt: its scale does not depend on K, so prompts with many ranked answers do not dominate the gradient.
    K/2 coincides with C(K,2) only at K = 2 (both 1) and is off by a factor (K - 1) in general.

    Shapes: ``rewards`` [B, K], each row ordered from best (column 0) to worst (column K-1); K >= 2 -> float.
    """
    fn = "ranking_loss"
    r = v.as_float(fn, "rewards", rewards, ndim=2, shape_doc="[B, K]")
    batch, k = r.shape
    if k < 2:
        raise ValueError(f"{fn}: 'rewards' must have K >= 2 ranked answers per row, got K={k}")
    if batch == 0:
        raise ValueError(f"{fn}: 'rewards' must have shape [B, K] with B >= 1, got {v._shape_str(r.shape)}")
    v.finite(fn, "rewards", r)
    n_pairs = math.comb(k, 2)
    total = 0.0
    for b in range(batch):
        pair_sum = 0.0
        for i in range(k):
            for j in range(i + 1, k):
                pair_sum += log_sigmoid(float(r[b, i] - r[b, j]))
        total += -pair_sum / n_pairs
    return float(total / batch)
