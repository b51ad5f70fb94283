"""The adaptive KL controller of Ziegler et al. 2019."""

from __future__ import annotations

import math
import numbers

from . import _validation as v


def adaptive_kl_update(beta: float, kl: float, target: float, n_steps: int, horizon: float) -> float:
    r"""One update of the adaptive KL coefficient.

    .. math::

        e_t = \mathrm{clip}\Big(\frac{\mathrm{KL}_t}{\mathrm{KL}_{target}} - 1,\ -0.2,\ 0.2\Big), \qquad
        \beta_{t+1} = \beta_t \Big(1 + e_t\, \frac{n_{steps}}{\text{horizon}}\Big)

    Source: Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", §2.2 (the paper writes
    :math:`K_\beta e_t`; the released ``AdaptiveKLController`` in openai/lm-human-preferences uses
    :math:`K_\beta = n_{steps}/\text{horizon}`, horizon = 10000 episodes, n_steps = the batch size).

    Conventions: the proportional error is clipped to +-0.2, so beta changes by at most a factor
    (1 +- 0.2 n_steps/horizon) per update. Which KL is fed in is the caller's choice and matters: the OpenAI
    target of 6 nats is a *per-sequence sum*; verl's target 0.1 is a token mean.
    """
    fn = "adaptive_kl_update"
    b = v.non_negative(fn, "beta", beta)
    t = v.positive(fn, "target", target)
    h = v.positive(fn, "horizon", horizon)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"{fn}: 'n_steps' must be an int >= 0, got {n_steps}")
    if isinstance(kl, bool) or not isinstance(kl, numbers.Real):
        raise ValueError(f"{fn}: 'kl' must be a number, got {kl!r}")
    if not math.isfinite(kl):
        raise ValueError(f"{fn}: 'kl' must be finite, got {kl}")
    error = min(max(kl / t - 1.0, -0.2), 0.2)
    return b * (1.0 + error * n_steps / h)


class AdaptiveKLController:
    """Stateful wrapper of :func:`adaptive_kl_update` (the ``AdaptiveKLController`` of lm-human-preferences).

    Source: Ziegler et al. 2019 §2.2 and ``train_policy.py`` of openai/lm-human-preferences.

    ``value`` is the current beta; ``update(kl, n_steps)`` applies one update and returns the new beta.
    Defaults follow the released code: horizon = 10000 (the launch script uses init_beta = 0.15, target = 6).
    """

    def __init__(self, init_beta: float, target: float, horizon: float = 10000) -> None:
        fn = "AdaptiveKLController"
        self.value = v.non_negative(fn, "init_beta", init_beta)
        self.target = v.positive(fn, "target", target)
        self.horizon = v.positive(fn, "horizon", horizon)

    def update(self, kl: float, n_steps: int) -> float:
        self.value = adaptive_kl_update(self.value, kl, self.target, n_steps, self.horizon)
        return self.value

    def __repr__(self) -> str:
        return f"AdaptiveKLController(value={self.value!r}, target={self.target!r}, horizon={self.horizon!r})"
