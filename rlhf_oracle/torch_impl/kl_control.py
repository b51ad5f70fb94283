"""The adaptive KL controller of Ziegler et al. 2019 (plain Python floats; tensors are read with ``float``)."""

from __future__ import annotations

import math
import numbers

import torch

from . import _validation as v


def adaptive_kl_update(beta: float, kl: float | torch.Tensor, target: float, n_steps: int, horizon: float) -> float:
    r"""One update: :math:`e = \mathrm{clip}(KL/KL_{target} - 1, -0.2, 0.2)`, :math:`\beta (1 + e\, n_{steps}/horizon)`.

    ``kl`` may be a Python number or a 0-dim tensor (read once with ``float``, a sync). Ziegler et al. 2019 §2.2;
    see :func:`rlhf_oracle.reference.adaptive_kl_update`.
    """
    fn = "adaptive_kl_update"
    b = v.non_negative(fn, "beta", beta)
    t = v.positive(fn, "target", target)
    h = v.positive(fn, "horizon", horizon)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"{fn}: 'n_steps' must be an int >= 0, got {n_steps}")
    if (
        isinstance(kl, bool)
        or not isinstance(kl, numbers.Real | torch.Tensor)
        or (isinstance(kl, torch.Tensor) and kl.numel() != 1)
    ):
        raise ValueError(f"{fn}: 'kl' must be a number, got {kl!r}")
    kl_value = float(kl)
    if not math.isfinite(kl_value):
        raise ValueError(f"{fn}: 'kl' must be finite, got {kl_value}")
    error = min(max(kl_value / t - 1.0, -0.2), 0.2)
    return b * (1.0 + error * n_steps / h)


class AdaptiveKLController:
    """Stateful wrapper of :func:`adaptive_kl_update`: ``value`` is beta, ``update(kl, n_steps)`` returns the new one.

    Equivalent to :class:`rlhf_oracle.reference.AdaptiveKLController` (horizon = 10000 as lm-human-preferences).
    """

    def __init__(self, init_beta: float, target: float, horizon: float = 10000) -> None:
        fn = "AdaptiveKLController"
        self.value = v.non_negative(fn, "init_beta", init_beta)
        self.target = v.positive(fn, "target", target)
        self.horizon = v.positive(fn, "horizon", horizon)

    def update(self, kl: float | torch.Tensor, n_steps: int) -> float:
        self.value = adaptive_kl_update(self.value, kl, self.target, n_steps, self.horizon)
        return self.value

    def __repr__(self) -> str:
        return f"AdaptiveKLController(value={self.value!r}, target={self.target!r}, horizon={self.horizon!r})"
