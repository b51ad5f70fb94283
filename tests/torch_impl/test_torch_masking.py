"""Values at masked positions never leak: NaN/inf there change neither the result nor the gradient.

Each case runs a function twice, once on inputs whose masked slots hold 0 and once on the same inputs with NaN
(or +-inf) there, and requires bit-identical outputs and finite gradients that are exactly 0 at masked slots.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from rlhf_oracle import torch_impl as ti

F64 = torch.float64
B, T = 3, 6


def _mask() -> torch.Tensor:
    return torch.tensor(
        [[1, 1, 1, 0, 0, 0], [0, 1, 0, 1, 1, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool
    )  # right padding, left padding with a hole, almost full


def _tensors(n: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [0.5 * torch.randn(B, T, dtype=F64, generator=gen) for _ in range(n)]


# name -> (number of [B, T] float inputs, function of (inputs, mask) returning a tensor)
CASES: dict[str, tuple[int, Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]]] = {
    "policy_loss": (3, lambda x, m: ti.policy_loss(x[0], x[1], x[2], m)),
    "policy_loss-dual-token-mean": (3, lambda x, m: ti.policy_loss(x[0], x[1], x[2], m, 0.2, 0.28, 3.0, "token-mean")),
    "aggregate": (1, lambda x, m: ti.aggregate(x[0], m)),
    "aggregate-sum-norm": (1, lambda x, m: ti.aggregate(x[0], m, "seq-mean-token-sum-norm")),
    "value_loss": (3, lambda x, m: ti.value_loss(x[0], x[1], x[2], m)),
    "value_loss-unclipped": (3, lambda x, m: ti.value_loss(x[0], x[1], x[2], m, None, "seq-mean-token-mean")),
    "ptx_loss": (1, lambda x, m: ti.ptx_loss(x[0], m)),
    "rlhf_objective": (2, lambda x, m: ti.rlhf_objective(torch.ones(B, dtype=F64), x[0], x[1], m, 0.1)),
    "kl_shaped_rewards-k1": (2, lambda x, m: ti.kl_shaped_rewards(torch.ones(B, dtype=F64), x[0], x[1], m, 0.1)),
    "kl_shaped_rewards-k3": (2, lambda x, m: ti.kl_shaped_rewards(torch.ones(B, dtype=F64), x[0], x[1], m, 0.1, "k3")),
    "gae-advantages": (2, lambda x, m: ti.gae(x[0], x[1], m, 1.0, 0.95).advantages),
    "gae-returns": (2, lambda x, m: ti.gae(x[0], x[1], m, 0.9, 0.8).returns),
    "whiten": (1, lambda x, m: ti.whiten(x[0], m)),
    "whiten-keep-mean": (1, lambda x, m: ti.whiten(x[0], m, shift_mean=False, unbiased=False)),
}


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_masked_values_never_leak(name: str, fill: float) -> None:
    n_inputs, fn = CASES[name]
    mask = _mask()
    clean = [torch.where(mask, x, 0.0) for x in _tensors(n_inputs, seed=len(name))]
    dirty = [torch.where(mask, x, fill).requires_grad_(True) for x in clean]
    expected = fn(clean, mask)
    actual = fn(dirty, mask)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    if actual.ndim == 2:  # per-token output: exactly 0 at masked positions (after_last is not used here)
        assert torch.all(actual[~mask] == 0)
    actual.sum().backward()
    for x in dirty:
        if x.grad is None:  # the output does not depend on this input (old_values without clipping)
            continue
        assert torch.isfinite(x.grad).all(), name
        assert torch.all(x.grad[~mask] == 0), name


def test_grpo_broadcast_is_zero_at_masked_positions() -> None:
    out = ti.grpo_advantages(torch.tensor([1.0, 2.0, 4.0], dtype=F64), 3, mask=_mask())
    assert torch.all(out[~_mask()] == 0)
    assert torch.all(out[_mask()] != 0)


def test_padding_layout_does_not_matter() -> None:
    """Left padding, right padding and holes give the same per-sequence losses as the unpadded row."""
    gen = torch.Generator().manual_seed(3)
    lp, lo, adv = (torch.randn(1, 4, dtype=F64, generator=gen) for _ in range(3))
    full = ti.policy_loss(lp, lo, adv, torch.ones(1, 4, dtype=torch.bool))
    for positions in ([0, 1, 2, 3], [3, 4, 5, 6], [1, 3, 4, 6]):
        mask = torch.zeros(1, 7, dtype=torch.bool)
        mask[0, positions] = True
        pads = [torch.full((1, 7), float("nan"), dtype=F64) for _ in range(3)]
        for pad, x in zip(pads, (lp, lo, adv), strict=True):
            pad[mask] = x[0]
        torch.testing.assert_close(ti.policy_loss(*pads, mask), full, rtol=1e-15, atol=1e-15)
