"""Bad input: one case per error class of docs/api-contract.md, with the exact message; and the value-check switch."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch

from rlhf_oracle import torch_impl as ti

F64 = torch.float64


def z(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, dtype=F64)


def ones_mask(*shape: int) -> torch.Tensor:
    return torch.ones(*shape, dtype=torch.bool)


def raises(exc: type[Exception], message: str, fn: Callable[[], object]) -> None:
    with pytest.raises(exc, match="^" + re.escape(message) + "$"):
        fn()


# --- static checks (always on) --------------------------------------------------------------------------------------


def test_shape_mismatch() -> None:
    raises(
        ValueError,
        "policy_loss: 'logp_old' has shape (2, 4), expected (2, 3) to match 'logp'",
        lambda: ti.policy_loss(z(2, 3), z(2, 4), z(2, 3), ones_mask(2, 3)),
    )
    raises(
        ValueError,
        "gae: 'mask' has shape (2, 4), expected (2, 3) to match 'rewards'",
        lambda: ti.gae(z(2, 3), z(2, 3), ones_mask(2, 4)),
    )
    raises(
        ValueError,
        "token_logprobs: 'tokens' has shape (2, 4), expected (2, 3) to match 'logits'",
        lambda: ti.token_logprobs(z(2, 3, 5), torch.zeros(2, 4, dtype=torch.long)),
    )
    raises(
        ValueError,
        "kl_shaped_rewards: 'scores' has shape (3,), expected (2,) to match 'logp'",
        lambda: ti.kl_shaped_rewards(z(3), z(2, 3), z(2, 3), ones_mask(2, 3), 0.1),
    )


def test_wrong_rank() -> None:
    raises(ValueError, "aggregate: 'values' must have shape [B, T], got (3,)", lambda: ti.aggregate(z(3), ones_mask(3)))
    raises(
        ValueError, "aggregate: 'mask' must have shape [B, T], got (3,)", lambda: ti.aggregate(z(1, 3), ones_mask(3))
    )
    raises(
        ValueError,
        "token_logprobs: 'logits' must have shape [B, T, V], got (2, 3)",
        lambda: ti.token_logprobs(z(2, 3), torch.zeros(2, 3, dtype=torch.long)),
    )
    raises(ValueError, "ranking_loss: 'rewards' must have shape [B, K], got (4,)", lambda: ti.ranking_loss(z(4)))


def test_dtype() -> None:
    raises(
        TypeError,
        "token_logprobs: 'tokens' must be an integer array, got dtype float32",
        lambda: ti.token_logprobs(z(1, 2, 3), torch.zeros(1, 2)),
    )
    raises(
        TypeError,
        "token_logprobs: 'logits' must be a floating array, got dtype int64",
        lambda: ti.token_logprobs(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long)),
    )
    raises(
        TypeError,
        "kl_estimate: 'logp_ref' must be a floating array, got dtype bool",
        lambda: ti.kl_estimate(z(3), torch.zeros(3, dtype=torch.bool)),
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: ti.policy_loss(z(1, 2), z(1, 2), z(1, 2), ones_mask(1, 2), 0.0),
            "policy_loss: 'clip_eps' must be > 0, got 0.0",
        ),
        (lambda: ti.ppo_clip_objective(z(2), z(2), z(2), 1.0), "ppo_clip_objective: 'clip_eps' must be < 1, got 1.0"),
        (lambda: ti.ppo_clip_grad(z(2), z(2), z(2), dual_clip=0.5), "ppo_clip_grad: 'dual_clip' must be > 1, got 0.5"),
        (lambda: ti.gae(z(1, 2), z(1, 2), ones_mask(1, 2), 1.5), "gae: 'gamma' must be in [0, 1], got 1.5"),
        (lambda: ti.gae(z(1, 2), z(1, 2), ones_mask(1, 2), 1.0, -0.1), "gae: 'lam' must be in [0, 1], got -0.1"),
        (
            lambda: ti.kl_shaped_rewards(z(1), z(1, 2), z(1, 2), ones_mask(1, 2), -1.0),
            "kl_shaped_rewards: 'beta' must be >= 0, got -1.0",
        ),
        (
            lambda: ti.kl_estimate(z(2), z(2), "k4"),
            "kl_estimate: 'kind' must be one of ('k1', 'k2', 'k3', 'abs'), got 'k4'",
        ),
        (
            lambda: ti.kl_estimate(z(2), z(2), log_ratio_clamp=0.0),
            "kl_estimate: 'log_ratio_clamp' must be > 0, got 0.0",
        ),
        (
            lambda: ti.aggregate(z(1, 2), ones_mask(1, 2), "mean"),
            "aggregate: 'agg' must be one of ('seq-mean-token-mean', 'token-mean', 'seq-mean-token-sum', "
            "'seq-mean-token-sum-norm'), got 'mean'",
        ),
        (
            lambda: ti.aggregate(z(1, 2), ones_mask(1, 2), max_tokens=0),
            "aggregate: 'max_tokens' must be a positive int or None, got 0",
        ),
        (lambda: ti.ranking_loss(z(3, 1)), "ranking_loss: 'rewards' must have K >= 2 ranked answers per row, got K=1"),
        (lambda: ti.grpo_advantages(z(4), 1), "grpo_advantages: 'group_size' must be an int >= 2, got 1"),
        (lambda: ti.grpo_advantages(z(5), 2), "grpo_advantages: 'scores' has 5 rows, not a multiple of group_size=2"),
        (
            lambda: ti.token_logprobs(z(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), temperature=0.0),
            "token_logprobs: 'temperature' must be > 0, got 0.0",
        ),
        (
            lambda: ti.rlhf_objective(z(1), z(1, 2), z(1, 2), ones_mask(1, 2), 0.1, gamma=1.0),
            "rlhf_objective: 'ptx_logp' and 'ptx_mask' are required when gamma != 0, got gamma=1.0",
        ),
        (lambda: ti.adaptive_kl_update(0.1, 1.0, 0.0, 1, 10.0), "adaptive_kl_update: 'target' must be > 0, got 0.0"),
        (
            lambda: ti.adaptive_kl_update(0.1, math.nan, 1.0, 1, 10.0),
            "adaptive_kl_update: 'kl' must be finite, got nan",
        ),
        (lambda: ti.AdaptiveKLController(-1.0, 6.0), "AdaptiveKLController: 'init_beta' must be >= 0, got -1.0"),
        (
            lambda: ti.reward_model_loss(z(0), z(0)),
            "reward_model_loss: 'chosen' must have shape [B] with B >= 1, got (0,)",
        ),
        (
            lambda: ti.value_loss(z(1, 2), z(1, 2), z(1, 2), ones_mask(1, 2), clip_eps=-0.2),
            "value_loss: 'clip_eps' must be > 0, got -0.2",
        ),
    ],
)
def test_bad_hyper_parameter(call: Callable[[], object], message: str) -> None:
    raises(ValueError, message, call)


# --- value checks (switchable) --------------------------------------------------------------------------------------


def test_mask_values() -> None:
    raises(
        ValueError,
        "aggregate: 'mask' must be boolean or contain only 0 and 1",
        lambda: ti.aggregate(z(1, 3), torch.tensor([[1, 2, 0]])),
    )
    # 0/1 floats are fine
    assert float(ti.aggregate(torch.ones(1, 3, dtype=F64), torch.tensor([[1.0, 0.0, 1.0]]))) == 1.0


def test_nan_at_a_valid_position() -> None:
    logp = torch.tensor([[0.0, math.nan]], dtype=F64)
    raises(
        ValueError,
        "policy_loss: 'logp' contains NaN or inf at a valid (unmasked) position",
        lambda: ti.policy_loss(logp, z(1, 2), z(1, 2), ones_mask(1, 2)),
    )
    raises(ValueError, "kl_estimate: 'logp' contains NaN or inf", lambda: ti.kl_estimate(logp, z(1, 2)))
    logits = z(1, 2, 3)
    logits[0, 1, 2] = -math.inf
    raises(
        ValueError,
        "token_logprobs: 'logits' contains NaN or inf",
        lambda: ti.token_logprobs(logits, torch.zeros(1, 2, dtype=torch.long)),
    )
    raises(ValueError, "entropy_from_logits: 'logits' contains NaN or inf", lambda: ti.entropy_from_logits(logits))


def test_empty_row_and_empty_mask() -> None:
    mask = torch.tensor([[True, False], [False, False]])
    raises(
        ValueError,
        "aggregate: 'mask' row 1 has no valid token; 'seq-mean-token-mean' divides by the row length",
        lambda: ti.aggregate(z(2, 2), mask),
    )
    raises(
        ValueError,
        "policy_loss: 'mask' row 1 has no valid token; 'seq-mean-token-mean' divides by the row length",
        lambda: ti.policy_loss(z(2, 2), z(2, 2), z(2, 2), mask),
    )
    raises(
        ValueError,
        "aggregate: 'mask' has no valid token",
        lambda: ti.aggregate(z(2, 2), ~ones_mask(2, 2), "token-mean"),
    )
    raises(ValueError, "whiten: 'mask' has no valid token", lambda: ti.whiten(z(2, 2), ~ones_mask(2, 2)))
    raises(
        ValueError,
        "whiten: 'mask' has 1 valid token; unbiased variance needs at least 2",
        lambda: ti.whiten(z(2, 2), mask.logical_and(torch.tensor([[True, False]]))),
    )
    raises(
        ValueError,
        "kl_shaped_rewards: 'mask' row 1 has no valid token; the score has no position",
        lambda: ti.kl_shaped_rewards(z(2), z(2, 2), z(2, 2), mask, 0.1),
    )
    # the sum modes and GAE accept empty rows
    assert float(ti.aggregate(torch.ones(2, 2, dtype=F64), mask, "seq-mean-token-sum")) == 0.5
    assert torch.all(ti.gae(z(2, 2), z(2, 2), mask).advantages == 0)


def test_after_last_needs_a_pad_slot() -> None:
    mask = torch.tensor([[True, False], [True, True]])
    raises(
        ValueError,
        "kl_shaped_rewards: 'mask' row 1 ends at the last position; score_position='after_last' needs a pad slot",
        lambda: ti.kl_shaped_rewards(z(2), z(2, 2), z(2, 2), mask, 0.1, score_position="after_last"),
    )


@pytest.mark.parametrize(("dtype", "gap"), [(F64, 800.0), (torch.float32, 100.0), (torch.float16, 12.0)])
def test_k3_overflow_in_the_input_dtype(dtype: torch.dtype, gap: float) -> None:
    logp, logp_ref = torch.tensor([0.0, 0.0], dtype=dtype), torch.tensor([1.0, gap], dtype=dtype)
    raises(
        ValueError,
        f"kl_estimate: k3 overflows at logp_ref - logp = {gap}; pass log_ratio_clamp or output_clamp",
        lambda: ti.kl_estimate(logp, logp_ref, "k3"),
    )
    # the clamp fixes it (where exp(c) fits the dtype)
    out = ti.kl_estimate(logp, logp_ref, "k3", log_ratio_clamp=10.0)
    assert out.dtype == dtype and torch.isfinite(out).all()


def test_token_out_of_range() -> None:
    raises(
        ValueError,
        "token_logprobs: 'tokens' must be in [0, 3), got values in [0, 3]",
        lambda: ti.token_logprobs(z(1, 2, 3), torch.tensor([[0, 3]])),
    )


def test_grpo_zero_std_and_zero_eps() -> None:
    raises(
        ValueError,
        "grpo_advantages: group 1 has identical scores and eps=0; pass 'eps' > 0",
        lambda: ti.grpo_advantages(torch.tensor([0.0, 1.0, 2.0, 2.0], dtype=F64), 2, eps=0.0),
    )


def test_value_checks_switch_and_context_manager() -> None:
    logp = torch.tensor([[0.0, math.nan]], dtype=F64)
    assert ti.value_checks_enabled()
    with ti.value_checks(False):
        assert not ti.value_checks_enabled()
        assert torch.isnan(ti.kl_estimate(logp, z(1, 2))).any()  # no check: NaN flows through
        with ti.value_checks(True):
            with pytest.raises(ValueError):
                ti.kl_estimate(logp, z(1, 2))
        assert not ti.value_checks_enabled()
    assert ti.value_checks_enabled()
    ti.set_value_checks(False)
    try:
        out = ti.kl_estimate(torch.tensor([0.0]), torch.tensor([100.0]), "k3")
        assert torch.isinf(out).all()  # k3 overflow not checked
        # static checks still run with value checks off
        with pytest.raises(ValueError, match="must have shape"):
            ti.aggregate(z(3), ones_mask(3))
    finally:
        ti.set_value_checks(True)
    with pytest.raises(ValueError):
        ti.kl_estimate(logp, z(1, 2))
