"""GAE: the blockwise vectorised form against the plain reverse loop, identities, holes, long sequences.

Tolerance for vectorised vs loop in float64: 1e-10 relative to max |A|. Both sum the same terms in a different
order; for T = 8192 and gamma*lam -> 1 the rounding error of either is at most ~T * 2^-53 * max|partial sum|,
about 1e-12 of the result scale here, so 1e-10 leaves a margin of 100 without hiding an algebraic error
(a wrong power or a dropped carry changes the result at order 1e-4 or more).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rlhf_oracle import torch_impl as ti
from rlhf_oracle.torch_impl.advantages import GAE_CHUNK, _discounted_reverse_cumsum, _gae_loop

F64 = torch.float64


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


def _inputs(batch: int, length: int, p_valid: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(batch, length, dtype=F64, generator=gen)
    values = torch.randn(batch, length, dtype=F64, generator=gen)
    mask = torch.rand(batch, length, generator=gen) < p_valid
    return rewards, values, mask


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.9999), (1.0, 1.0), (0.0, 0.5), (0.99, 0.95), (1.0, 0.0)])
def test_vectorised_equals_loop_long_sequences(gamma: float, lam: float) -> None:
    rewards, values, mask = _inputs(3, 8192, 0.8, seed=0)  # holes everywhere (20% masked)
    mask[1] = False  # an empty row is legal: all zeros
    mask[2, 4000:] = False  # right padding
    vec = ti.gae(rewards, values, mask, gamma, lam)
    loop = _gae_loop(rewards, values, mask, gamma, lam)
    assert _rel_err(vec.advantages, loop.advantages) < 1e-10
    assert _rel_err(vec.returns, loop.returns) < 1e-10
    assert torch.all(vec.advantages[1] == 0)


@pytest.mark.parametrize("chunk", [2, 3, 7, 64, 1000])
@pytest.mark.parametrize("length", [1, 5, 130, 257])
def test_vectorised_equals_loop_any_block_size(chunk: int, length: int) -> None:
    rewards, values, mask = _inputs(4, length, 0.6, seed=length)
    vec = ti.gae(rewards, values, mask, 0.97, 0.9, chunk_size=chunk)
    loop = _gae_loop(rewards, values, mask, 0.97, 0.9)
    torch.testing.assert_close(vec.advantages, loop.advantages, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vec.returns, loop.returns, rtol=1e-12, atol=1e-12)


def test_discounted_reverse_cumsum_three_levels() -> None:
    # length 1000 with blocks of 4 needs ceil(log_4 1000) = 5 levels of block heads
    x = torch.randn(2, 1000, dtype=F64, generator=torch.Generator().manual_seed(3))
    g = 0.999
    expected = torch.zeros_like(x)
    acc = torch.zeros(2, dtype=F64)
    for k in reversed(range(1000)):
        acc = x[:, k] + g * acc
        expected[:, k] = acc
    torch.testing.assert_close(_discounted_reverse_cumsum(x, g, 4), expected, rtol=1e-12, atol=1e-12)


def test_holes_are_skipped() -> None:
    """The result on a row with holes equals the result on the same row with the holes removed."""
    rewards, values, mask = _inputs(1, 300, 0.5, seed=4)
    holed = ti.gae(rewards, values, mask, 0.95, 0.9)
    compact = ti.gae(rewards[mask][None], values[mask][None], torch.ones(1, int(mask.sum())), 0.95, 0.9)
    torch.testing.assert_close(holed.advantages[mask][None], compact.advantages, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(holed.returns[mask][None], compact.returns, rtol=1e-12, atol=1e-12)
    assert torch.all(holed.advantages[~mask] == 0) and torch.all(holed.returns[~mask] == 0)


def test_lambda_zero_is_delta_and_lambda_one_is_reward_to_go_minus_value() -> None:
    rewards, values, _ = _inputs(2, 200, 1.0, seed=5)
    mask = torch.ones(2, 200, dtype=torch.bool)
    gamma = 0.9
    next_values = torch.cat([values[:, 1:], torch.zeros(2, 1, dtype=F64)], dim=1)
    delta = rewards + gamma * next_values - values
    torch.testing.assert_close(ti.gae(rewards, values, mask, gamma, 0.0).advantages, delta, rtol=1e-12, atol=1e-12)
    to_go = torch.zeros_like(rewards)
    acc = torch.zeros(2, dtype=F64)
    for k in reversed(range(200)):
        acc = rewards[:, k] + gamma * acc
        to_go[:, k] = acc
    one = ti.gae(rewards, values, mask, gamma, 1.0)
    torch.testing.assert_close(one.advantages, to_go - values, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(one.returns, to_go, rtol=1e-11, atol=1e-11)


def test_values_and_rewards_at_masked_positions_never_leak() -> None:
    rewards, values, mask = _inputs(3, 50, 0.7, seed=6)
    clean = ti.gae(rewards, values, mask, 1.0, 0.95)
    dirty_r = torch.where(mask, rewards, torch.nan)
    dirty_v = torch.where(mask, values, torch.inf).requires_grad_(True)
    dirty = ti.gae(dirty_r, dirty_v, mask, 1.0, 0.95)
    torch.testing.assert_close(dirty.advantages, clean.advantages, rtol=0, atol=0)
    (dirty.advantages.sum() + dirty.returns.sum()).backward()
    assert dirty_v.grad is not None and torch.isfinite(dirty_v.grad).all()
    assert torch.all(dirty_v.grad[~mask] == 0)


def test_gae_gradcheck_float64() -> None:
    rewards, values, mask = _inputs(2, 9, 0.7, seed=7)
    rewards.requires_grad_(True)
    values.requires_grad_(True)

    def f(r: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = ti.gae(r, v, mask, 0.95, 0.9, chunk_size=2)
        return out.advantages, out.returns

    assert torch.autograd.gradcheck(f, (rewards, values))


def test_gae_float32_and_half_close_to_float64() -> None:
    rewards, values, mask = _inputs(2, 2000, 0.9, seed=8)
    exact = ti.gae(rewards, values, mask, 1.0, 0.999).advantages
    # float32: inputs rounded (2^-24 relative) and ~2000 additions in float32; 1e-5 of the result scale
    f32 = ti.gae(rewards.float(), values.float(), mask, 1.0, 0.999).advantages
    assert f32.dtype == torch.float32 and _rel_err(f32.double(), exact) < 1e-5
    for dtype, bound in ((torch.bfloat16, 2**-7), (torch.float16, 2**-9)):
        r, v = rewards.to(dtype), values.to(dtype)
        half = ti.gae(r, v, mask, 1.0, 0.999).advantages
        on_rounded = ti.gae(r.double(), v.double(), mask, 1.0, 0.999).advantages
        # computed in float32 and rounded once: within one output rounding of the float64 result on the same inputs
        assert half.dtype == dtype
        assert _rel_err(half.double(), on_rounded) < bound


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops (kernel launches, on a GPU) dispatched inside the context."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


def _count_ops(fn: Callable[[], object]) -> int:
    with _OpCounter() as counter:
        fn()
    return counter.count


def test_number_of_kernels_does_not_grow_with_the_sequence_length() -> None:
    """No kernel per token: the op count depends on the number of block levels (ceil(log_C T)), not on T."""
    counts = {}
    for length in (256, 8192, 16384):  # 2 levels of blocks for C = 128 (3 from T > 16384)
        rewards, values, mask = _inputs(2, length, 0.9, seed=9)
        with ti.value_checks(False):
            counts[length] = _count_ops(lambda r=rewards, v=values, m=mask: ti.gae(r, v, m))
    assert counts[256] == counts[8192] == counts[16384] < 100, counts
    rewards, values, mask = _inputs(2, 64, 0.9, seed=9)
    assert _count_ops(lambda: _gae_loop(rewards, values, mask)) > 64 * 5  # the loop: several ops per token


def test_block_constant() -> None:
    assert GAE_CHUNK >= 16
