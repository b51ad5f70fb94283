"""The InstructGPT objective and its per-token form: KL folded into the reward, and the pretraining term."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _validation as v
from ._validation import BoolArray, FloatArray
from .kl import KL_ESTIMATORS, kl_estimate
from .policy import AGGREGATION_MODES, _aggregate

SCORE_POSITIONS = ("last", "after_last")


def _response_inputs(
    fn: str, scores: Any, logp: Any, logp_ref: Any, mask: Any, beta: float
) -> tuple[FloatArray, FloatArray, FloatArray, BoolArray, float]:
    """Validate the sampled responses shared by the KL-in-reward formulas: scores [B], logp/logp_ref/mask [B, T]."""
    lp = v.as_float(fn, "logp", logp, ndim=2, shape_doc="[B, T]")
    lr = v.as_float(fn, "logp_ref", logp_ref)
    v.same_shape(fn, "logp_ref", lr, "logp", lp)
    m = v.as_mask(fn, mask, like=lp, like_name="logp")
    s = v.as_float(fn, "scores", scores, ndim=1, shape_doc="[B]")
    if s.shape[0] != lp.shape[0]:
        raise ValueError(f"{fn}: 'scores' has shape {v._shape_str(s.shape)}, expected ({lp.shape[0]},) to match 'logp'")
    b = v.non_negative(fn, "beta", beta)
    v.finite(fn, "scores", s)
    v.finite(fn, "logp", lp, m)
    v.finite(fn, "logp_ref", lr, m)
    return s, lp, lr, m, b


def kl_shaped_rewards(
    scores: Any,
    logp: Any,
    logp_ref: Any,
    mask: Any,
    beta: float,
    kind: str = "k1",
    *,
    score_position: str = "last",
) -> FloatArray:
    r"""Per-token rewards with the KL penalty folded in ("KL in the reward").

    .. math::

        r_{b,t} = -\beta\, k_{b,t} + \mathbb{1}[t = t^\ast_b]\, R_b,
        \qquad k_{b,t} = \log\frac{\pi_\theta(o_{b,t}|\cdot)}{\pi_{ref}(o_{b,t}|\cdot)} \ \text{(k1)}

    so that, with k1, :math:`\sum_t r_{b,t} = R_b - \beta \log\frac{\pi_\theta(o_b|q_b)}{\pi_{ref}(o_b|q_b)}`, the
    per-sequence reward of InstructGPT eq. 2 (the telescoping identity checked in
    :mod:`rlhf_oracle.derivations`).

    Source: Ziegler et al. 2019 (``compute_rewards`` in openai/lm-human-preferences); DeepSeekMath eq. 2;
    InstructGPT: "we add a per-token KL penalty from the SFT model at each token".

    Shapes: ``scores`` [B] (the reward-model score R_b of each sequence), ``logp``, ``logp_ref``, ``mask``
    [B, T] -> [B, T], exactly 0 at masked positions.

    Conventions:
        - ``kind``: the per-token KL estimator (see :func:`rlhf_oracle.reference.kl_estimate`); k1 is the standard
          choice in the reward (its expectation is the KL and the telescoping identity holds exactly).
        - ``score_position="last"`` (default; verl, OpenRLHF): t* is the last valid token, i.e. the EOS token.
          ``"after_last"`` (TRL PPO, DeepSpeed-Chat): t* is the position right after it (the first pad), a masked
          position that the caller must add to the mask before GAE; an error if the row ends at T - 1.
        - a row with no valid token is an error (the score has nowhere to go).
        - ``beta >= 0``; ``beta = 0`` gives the score alone.
    """
    fn = "kl_shaped_rewards"
    s, lp, lr, m, b = _response_inputs(fn, scores, logp, logp_ref, mask, beta)
    v.choice(fn, "kind", kind, KL_ESTIMATORS)
    v.choice(fn, "score_position", score_position, SCORE_POSITIONS)

    batch, length = lp.shape
    rewards = np.zeros((batch, length), dtype=np.float64)
    for i in range(batch):
        valid = np.flatnonzero(m[i])
        if valid.size == 0:
            raise ValueError(f"{fn}: 'mask' row {i} has no valid token; the score has no position")
        for t in valid:
            rewards[i, t] = -b * kl_estimate(lp[i, t], lr[i, t], kind)
        last = int(valid[-1])
        if score_position == "last":
            rewards[i, last] += s[i]
        else:
            if last + 1 >= length:
                raise ValueError(
                    f"{fn}: 'mask' row {i} ends at the last position; score_position='after_last' needs a pad slot"
                )
            rewards[i, last + 1] += s[i]
    return rewards


def ptx_loss(logp: Any, mask: Any, agg: str = "token-mean") -> float:
    r"""Pretraining (language-modelling) loss: minus the mean log-likelihood of pretraining tokens.

    .. math::

        \mathcal{L}_{ptx} = -\frac{\sum_{b,t} m_{b,t} \log \pi_\theta(x_{b,t} \mid x_{b,<t})}{\sum_{b,t} m_{b,t}}

    Source: InstructGPT (Ouyang et al. 2022) eq. 2, the term :math:`\gamma\, E_{x\sim D_{pretrain}}[\log\pi^{RL}(x)]`
    of "PPO-ptx" (gamma = 27.8 in App. C.4).

    Shapes: ``logp`` [B, T] (log-probabilities of the pretraining tokens, e.g. from ``token_logprobs``),
    ``mask`` [B, T] -> float.

    Conventions: ``agg="token-mean"`` (default) is the usual cross-entropy of DeepSpeed-Chat and OpenRLHF; the
    paper's expectation of the *sequence* log-likelihood is ``agg="seq-mean-token-sum"``. Any mode of
    :func:`rlhf_oracle.reference.aggregate` is accepted.
    """
    fn = "ptx_loss"
    lp = v.as_float(fn, "logp", logp, ndim=2, shape_doc="[B, T]")
    m = v.as_mask(fn, mask, like=lp, like_name="logp")
    v.choice(fn, "agg", agg, AGGREGATION_MODES)
    v.finite(fn, "logp", lp, m)
    return -_aggregate(fn, lp, m, agg, None)


def rlhf_objective(
    scores: Any,
    logp: Any,
    logp_ref: Any,
    mask: Any,
    beta: float,
    ptx_logp: Any = None,
    ptx_mask: Any = None,
    gamma: float = 0.0,
) -> float:
    r"""Batch estimate of the InstructGPT RL objective (to maximise).

    .. math::

        J(\phi) = \mathbb{E}_{(x,y)\sim \pi_\phi^{RL}}\Big[r_\theta(x,y) - \beta\log\frac{\pi^{RL}_\phi(y|x)}
        {\pi^{SFT}(y|x)}\Big] + \gamma\, \mathbb{E}_{x\sim D_{pretrain}}\big[\log \pi^{RL}_\phi(x)\big]

    estimated as
    :math:`\frac1B\sum_b\big[R_b - \beta\sum_t m_{b,t}(\log\pi_{b,t} - \log\pi^{ref}_{b,t})\big] - \gamma\,
    \mathcal{L}_{ptx}`.

    Source: Ouyang et al. 2022, "Training language models to follow instructions with human feedback", eq. 2
    (beta = 0.02, gamma = 27.8 for PPO-ptx, gamma = 0 for "PPO").

    Shapes: ``scores`` [B]; ``logp``, ``logp_ref``, ``mask`` [B, T] (the sampled responses);
    ``ptx_logp``, ``ptx_mask`` [B', T'] (pretraining tokens) -> float.

    Conventions: the sequence log-ratio is the sum of the per-token log-ratios (k1) over the response; the
    pretraining term uses :func:`ptx_loss` (token-mean log-likelihood). ``gamma != 0`` requires both ptx inputs.
    Note the notation trap: gamma here is the pretraining coefficient, not a discount.
    """
    fn = "rlhf_objective"
    s, lp, lr, m, b = _response_inputs(fn, scores, logp, logp_ref, mask, beta)
    if lp.shape[0] == 0:  # a mean over the batch: as every reduction to a scalar, B = 0 is refused
        raise ValueError(f"{fn}: 'logp' must have shape [B, T] with B >= 1, got {v._shape_str(lp.shape)}")
    g = v.non_negative(fn, "gamma", gamma)

    batch, length = lp.shape
    per_sequence = []
    for i in range(batch):
        log_ratio = sum(lp[i, t] - lr[i, t] for t in range(length) if m[i, t])
        per_sequence.append(s[i] - b * log_ratio)
    objective = float(sum(per_sequence) / batch)

    if g != 0.0:
        if ptx_logp is None or ptx_mask is None:
            raise ValueError(f"{fn}: 'ptx_logp' and 'ptx_mask' are required when gamma != 0, got gamma={gamma}")
        objective -= g * ptx_loss(ptx_logp, ptx_mask)
    return objective
