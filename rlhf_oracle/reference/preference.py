"""Direct preference optimisation: the DPO loss on sequence log-probabilities."""

from __future__ import annotations

from typing import Any

from . import _validation as v
from .reward_model import log_sigmoid


def dpo_loss(
    logp_chosen: Any,
    logp_rejected: Any,
    ref_logp_chosen: Any,
    ref_logp_rejected: Any,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> float:
    r"""The DPO loss, averaged over the batch.

    .. math::

        h_b = \big(\log\pi_\theta(y_{w,b}|x_b) - \log\pi_{ref}(y_{w,b}|x_b)\big)
            - \big(\log\pi_\theta(y_{l,b}|x_b) - \log\pi_{ref}(y_{l,b}|x_b)\big)

        \mathcal{L}_{DPO} = -\frac{1}{B}\sum_{b=1}^{B}\Big[(1-\varepsilon)\log\sigma(\beta h_b)
            + \varepsilon\log\sigma(-\beta h_b)\Big]

    Source: Rafailov et al. 2023, "Direct Preference Optimization", eq. 7 (:math:`\varepsilon = 0`). It is the
    Bradley-Terry loss of InstructGPT eq. 1 with the reward replaced by the implicit reward
    :math:`\beta\log\frac{\pi_\theta}{\pi_{ref}}`, which the closed-form optimum
    :math:`\pi^*(y|x) = \pi_{ref}(y|x)\,e^{r(x,y)/\beta}/Z(x)` of the KL-regularised objective
    :math:`\max_\pi \mathbb{E}[r] - \beta\,\mathrm{KL}(\pi\|\pi_{ref})` (eq. 4) gives; the partition function
    :math:`Z(x)` cancels in the difference (sympy: ``derivations.get("dpo_optimum")``). ``label_smoothing``
    :math:`\varepsilon` is conservative DPO (Mitchell 2023, eq. 3): the labels are flipped with probability
    :math:`\varepsilon`, as in TRL and OpenRLHF.

    Shapes: the four inputs are [B] *sequence* log-probabilities (the sum over the response tokens of
    ``token_logprobs``, masked), float -> float.

    Conventions: ``beta`` > 0 scales the implicit reward (TRL and OpenRLHF default 0.1); ``label_smoothing`` in
    [0, 0.5]; the log-sigmoid is evaluated stably (no overflow at any gap).
    """
    fn = "dpo_loss"
    w = v.as_float(fn, "logp_chosen", logp_chosen, ndim=1, shape_doc="[B]")
    if w.shape[0] == 0:
        raise ValueError(f"{fn}: 'logp_chosen' must have shape [B] with B >= 1, got (0,)")
    arrays = {"logp_chosen": w}
    for name, x in (("logp_rejected", logp_rejected), ("ref_logp_chosen", ref_logp_chosen),
                    ("ref_logp_rejected", ref_logp_rejected)):  # fmt: skip
        arrays[name] = v.as_float(fn, name, x)
        v.same_shape(fn, name, arrays[name], "logp_chosen", w)
    b = v.positive(fn, "beta", beta)
    eps = v.non_negative(fn, "label_smoothing", label_smoothing)
    if eps > 0.5:
        raise ValueError(f"{fn}: 'label_smoothing' must be in [0, 0.5], got {label_smoothing!r}")
    for name, x in arrays.items():
        v.finite(fn, name, x)
    losses = []
    for i in range(w.shape[0]):
        chosen_margin = float(arrays["logp_chosen"][i] - arrays["ref_logp_chosen"][i])
        rejected_margin = float(arrays["logp_rejected"][i] - arrays["ref_logp_rejected"][i])
        h = chosen_margin - rejected_margin
        losses.append(-(1.0 - eps) * log_sigmoid(b * h) - eps * log_sigmoid(-b * h))
    return float(sum(losses) / len(losses))
