"""One test per bad-input class: each error names the function, the argument and what was expected."""

from __future__ import annotations

import re

import numpy as np
import pytest

from rlhf_oracle import reference as ref

X = np.zeros((2, 3))
M = np.ones((2, 3))
NAN = float("nan")


def raises(exc: type[Exception], *fragments: str):
    return pytest.raises(exc, match=".*".join(re.escape(f) for f in fragments))


def test_mismatched_shapes_name_both_arguments() -> None:
    with raises(ValueError, "policy_loss: 'logp_old' has shape (2, 4)", "(2, 3)", "'logp'"):
        ref.policy_loss(X, np.zeros((2, 4)), X, M)
    with raises(ValueError, "gae: 'mask' has shape (3, 3)", "'rewards'"):
        ref.gae(X, X, np.ones((3, 3)))
    with raises(ValueError, "kl_shaped_rewards: 'scores' has shape (3,)"):
        ref.kl_shaped_rewards(np.zeros(3), X, X, M, 0.1)
    with raises(ValueError, "token_logprobs: 'tokens' has shape (2, 2)", "'logits'"):
        ref.token_logprobs(np.zeros((2, 3, 5)), np.zeros((2, 2), dtype=int))


def test_wrong_rank_names_the_expected_shape() -> None:
    with raises(ValueError, "aggregate: 'values' must have shape [B, T], got (3,)"):
        ref.aggregate(np.zeros(3), np.ones(3))
    with raises(ValueError, "token_logprobs: 'logits' must have shape [B, T, V], got (2, 3)"):
        ref.token_logprobs(X, np.zeros((2, 3), dtype=int))
    with raises(ValueError, "ranking_loss: 'rewards' must have shape [B, K], got (4,)"):
        ref.ranking_loss(np.zeros(4))


def test_wrong_dtypes() -> None:
    with raises(TypeError, "ppo_clip_objective: 'logp' must be a floating array, got dtype int64"):
        ref.ppo_clip_objective(np.zeros(3, dtype=np.int64), np.zeros(3), np.zeros(3))
    with raises(TypeError, "token_logprobs: 'tokens' must be an integer array, got dtype float64"):
        ref.token_logprobs(np.zeros((2, 3, 5)), X)
    with raises(ValueError, "token_logprobs: 'tokens' must be in [0, 5)"):
        ref.token_logprobs(np.zeros((1, 1, 5)), np.array([[5]]))


def test_mask_must_be_boolean_or_zero_one() -> None:
    with raises(ValueError, "whiten: 'mask' must be boolean or contain only 0 and 1"):
        ref.whiten(X, M * 2)


@pytest.mark.parametrize("mode", ["seq-mean-token-mean"])
def test_empty_row_where_the_formula_divides_by_its_length(mode: str) -> None:
    mask = np.array([[1, 1, 0], [0, 0, 0]])
    with raises(ValueError, "policy_loss: 'mask' row 1 has no valid token; 'seq-mean-token-mean' divides"):
        ref.policy_loss(X, X, X, mask, agg=mode)
    # the same row is fine for the modes that do not divide by the row length
    assert ref.policy_loss(X, X, np.ones((2, 3)), mask, agg="token-mean") == -1.0
    with raises(ValueError, "kl_shaped_rewards: 'mask' row 1 has no valid token"):
        ref.kl_shaped_rewards(np.zeros(2), X, X, mask, 0.1)
    with raises(ValueError, "aggregate: 'mask' has no valid token"):
        ref.aggregate(X, np.zeros((2, 3)), "token-mean")
    with raises(ValueError, "whiten: 'mask' has 1 valid token; unbiased variance needs at least 2"):
        ref.whiten(X, np.array([[1, 0, 0], [0, 0, 0]]))
    # GAE does not divide: an empty row is legal and all zeros
    assert np.all(ref.gae(X + 1, X + 1, mask).advantages[1] == 0)


def test_after_last_needs_a_pad_slot() -> None:
    with raises(ValueError, "'mask' row 0 ends at the last position; score_position='after_last'"):
        ref.kl_shaped_rewards(np.zeros(2), X, X, M, 0.1, score_position="after_last")


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: ref.ppo_clip_objective(X, X, X, clip_eps=0.0), "ppo_clip_objective: 'clip_eps' must be > 0, got 0.0"),
        (lambda: ref.ppo_clip_objective(X, X, X, clip_eps=1.5), "'clip_eps' must be < 1, got 1.5"),
        (lambda: ref.policy_loss(X, X, X, M, dual_clip=0.9), "policy_loss: 'dual_clip' must be > 1, got 0.9"),
        (lambda: ref.policy_loss(X, X, X, M, clip_eps_high=-0.1), "'clip_eps_high' must be > 0, got -0.1"),
        (lambda: ref.kl_shaped_rewards(np.zeros(2), X, X, M, -0.1), "kl_shaped_rewards: 'beta' must be >= 0"),
        (lambda: ref.gae(X, X, M, gamma=1.1), "gae: 'gamma' must be in [0, 1], got 1.1"),
        (lambda: ref.gae(X, X, M, lam=-0.5), "gae: 'lam' must be in [0, 1], got -0.5"),
        (lambda: ref.ranking_loss(np.zeros((2, 1))), "ranking_loss: 'rewards' must have K >= 2"),
        (lambda: ref.value_loss(X, X, X, M, clip_eps=-1.0), "value_loss: 'clip_eps' must be > 0"),
        (lambda: ref.aggregate(X, M, "seq-mean-token-sum-norm", max_tokens=0), "'max_tokens' must be a positive"),
        (lambda: ref.grpo_advantages(np.zeros(4), 1), "grpo_advantages: 'group_size' must be an int >= 2"),
        (lambda: ref.grpo_advantages(np.zeros(5), 2), "not a multiple of group_size=2"),
        (lambda: ref.adaptive_kl_update(0.1, 1.0, 0.0, 1, 10), "adaptive_kl_update: 'target' must be > 0"),
        (lambda: ref.rlhf_objective(np.zeros(2), X, X, M, 0.1, gamma=1.0), "'ptx_logp' and 'ptx_mask' are required"),
        (lambda: ref.token_logprobs(np.zeros((1, 1, 2)), np.zeros((1, 1), int), temperature=0), "'temperature'"),
    ],
)
def test_out_of_range_hyper_parameters(call, fragment: str) -> None:
    with raises(ValueError, fragment):
        call()


def test_unknown_options_list_the_choices() -> None:
    with raises(ValueError, "aggregate: 'agg' must be one of", "'token-mean'", "got 'mean'"):
        ref.aggregate(X, M, "mean")
    with raises(ValueError, "kl_estimate: 'kind' must be one of ('k1', 'k2', 'k3', 'abs'), got 'k4'"):
        ref.kl_estimate(X, X, "k4")
    with raises(ValueError, "policy_loss: 'agg' must be one of"):
        ref.policy_loss(X, X, X, M, agg="sum")


def test_non_finite_values_at_valid_positions_only() -> None:
    bad = X.copy()
    bad[0, 1] = NAN
    with raises(ValueError, "policy_loss: 'advantages' contains NaN or inf at a valid (unmasked) position"):
        ref.policy_loss(X, X, bad, M)
    masked = M.copy()
    masked[0, 1] = 0
    assert np.isfinite(ref.policy_loss(X, X, bad, masked))  # the NaN sits in a masked slot: ignored
    with raises(ValueError, "reward_model_loss: 'chosen' contains NaN or inf"):
        ref.reward_model_loss([float("inf")], [0.0])
    with raises(ValueError, "entropy_from_logits: 'logits' contains NaN or inf"):
        ref.entropy_from_logits(np.array([[NAN, 0.0]]))
