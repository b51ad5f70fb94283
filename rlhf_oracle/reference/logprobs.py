"""Language-model helpers: per-token log-probabilities and entropy.

These make the substitution of the LM form of PPO explicit: the state is the prompt plus the prefix,
``s_t = (q, o_{<t})``, and the action is the next token ``a_t = o_t``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _validation as v
from ._validation import FloatArray


def _log_softmax(z: FloatArray) -> FloatArray:
    """log softmax over the last axis, shifted by the max so that exp never overflows."""
    z_max = np.max(z, axis=-1, keepdims=True)
    log_norm = z_max + np.log(np.sum(np.exp(z - z_max), axis=-1, keepdims=True))
    log_p: FloatArray = z - log_norm
    return log_p


def token_logprobs(logits: Any, tokens: Any, *, temperature: float = 1.0) -> FloatArray:
    r"""Log-probability of each chosen token under the policy.

    .. math::

        \log \pi_\theta(o_t \mid q, o_{<t}) = \frac{z_{t, o_t}}{\tau} - \log \sum_{v=1}^{V} e^{z_{t,v}/\tau}

    Source: the LM form of PPO (state = (q, o_{<t}), action = o_t), DeepSeekMath eq. 1 (Shao et al. 2024).

    Shapes: ``logits`` [B, T, V], ``tokens`` [B, T] (integers in [0, V)) -> [B, T].

    Conventions:
        - ``logits[b, t]`` already predicts ``tokens[b, t]``: the caller does the causal shift
          (a causal LM's logits at position t predict the token at t + 1).
        - ``temperature`` divides the logits first, as TRL, verl and lm-human-preferences do when the rollout was
          sampled at that temperature.
        - No mask: every position is computed. Padding positions give a valid number for any in-range token id.
    """
    fn = "token_logprobs"
    z = v.as_float(fn, "logits", logits, ndim=3, shape_doc="[B, T, V]")
    o = v.as_int(fn, "tokens", tokens, ndim=2, shape_doc="[B, T]")
    if o.shape != z.shape[:2]:
        raise ValueError(
            f"{fn}: 'tokens' has shape {v._shape_str(o.shape)}, expected {v._shape_str(z.shape[:2])} to match 'logits'"
        )
    tau = v.positive(fn, "temperature", temperature)
    vocab = z.shape[-1]
    if o.size and (o.min() < 0 or o.max() >= vocab):
        raise ValueError(f"{fn}: 'tokens' must be in [0, {vocab}), got values in [{o.min()}, {o.max()}]")
    v.finite(fn, "logits", z)

    logp_all = _log_softmax(z / tau)
    batch, length = o.shape
    out = np.zeros((batch, length), dtype=np.float64)
    for b in range(batch):
        for t in range(length):
            out[b, t] = logp_all[b, t, o[b, t]]
    return out


def entropy_from_logits(logits: Any, *, temperature: float = 1.0) -> FloatArray:
    r"""Entropy of the next-token distribution at every position.

    .. math::

        H(\pi(\cdot \mid s_t)) = -\sum_v p_v \log p_v = \log \sum_v e^{z_v} - \sum_v p_v z_v,
        \qquad p = \mathrm{softmax}(z), \; z = \text{logits} / \tau

    Source: the entropy bonus ``S[pi](s_t)`` of PPO, Schulman et al. 2017 eq. 9.

    Shapes: ``logits`` [..., V] -> [...] (typically [B, T, V] -> [B, T]).

    Conventions: the second form (logsumexp minus the expected logit) is the one TRL, verl and OpenRLHF use;
    it is algebraically the first. ``0 <= H <= log V``.
    """
    fn = "entropy_from_logits"
    z = v.as_float(fn, "logits", logits)
    if z.ndim < 1 or z.shape[-1] < 1:
        raise ValueError(f"{fn}: 'logits' must have shape [..., V] with V >= 1, got {v._shape_str(z.shape)}")
    tau = v.positive(fn, "temperature", temperature)
    v.finite(fn, "logits", z)
    log_p = _log_softmax(z / tau)
    p = np.exp(log_p)
    entropy: FloatArray = -np.sum(p * log_p, axis=-1)
    return entropy
