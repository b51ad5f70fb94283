"""Hand-computed cases for every torch_impl function: the expected values are worked out here with plain
arithmetic and ``math`` (never copied from an implementation's output).

Tolerance: float64 inputs, results compared to 1e-12 (a few ulps of the handful of operations involved).
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_oracle import torch_impl as ti

F64 = torch.float64
TOL = {"rtol": 1e-12, "atol": 1e-12}


def t(x: object) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


def close(actual: torch.Tensor, expected: object) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), **TOL)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# --- logprobs -------------------------------------------------------------------------------------------------------


def test_token_logprobs_by_hand() -> None:
    # z = [0, ln 2, ln 3]: softmax = [1, 2, 3] / 6.
    logits = t([[[0.0, math.log(2), math.log(3)], [0.0, 0.0, 0.0]]])
    tokens = torch.tensor([[2, 1]])
    close(ti.token_logprobs(logits, tokens), [[math.log(3 / 6), math.log(1 / 3)]])


def test_token_logprobs_temperature_by_hand() -> None:
    # z / 2 = [0, ln sqrt 2, ln sqrt 3]: p(1) = sqrt 2 / (1 + sqrt 2 + sqrt 3).
    logits = t([[[0.0, math.log(2), math.log(3)]]])
    expected = math.log(math.sqrt(2) / (1 + math.sqrt(2) + math.sqrt(3)))
    close(ti.token_logprobs(logits, torch.tensor([[1]]), temperature=2.0), [[expected]])


def test_token_logprobs_chunking_does_not_change_the_value() -> None:
    logits = torch.randn(2, 13, 7, dtype=F64, generator=torch.Generator().manual_seed(0))
    tokens = torch.randint(0, 7, (2, 13), generator=torch.Generator().manual_seed(1))
    full = ti.token_logprobs(logits, tokens, chunk_size=13)
    for chunk in (1, 4, 5, 100):
        torch.testing.assert_close(ti.token_logprobs(logits, tokens, chunk_size=chunk), full, rtol=0, atol=0)


def test_entropy_by_hand() -> None:
    # uniform over 4: ln 4; z = [0, ln 3]: p = [1/4, 3/4].
    logits = t([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3), -800.0, -800.0]])  # exp(-800) underflows to 0
    h2 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    torch.testing.assert_close(ti.entropy_from_logits(logits), t([math.log(4), h2]), rtol=1e-12, atol=1e-12)
    # 1-D input and temperature: z / tau with tau -> the same distribution as [0, ln 3] when logits = [0, 2 ln 3].
    close(ti.entropy_from_logits(t([0.0, 2 * math.log(3)]), temperature=2.0), h2)


def test_entropy_chunked_over_leading_axes() -> None:
    logits = torch.randn(2, 3, 9, 5, dtype=F64, generator=torch.Generator().manual_seed(2))
    full = ti.entropy_from_logits(logits, chunk_size=9)
    torch.testing.assert_close(ti.entropy_from_logits(logits, chunk_size=2), full, rtol=0, atol=0)
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(full, -(p * p.log()).sum(-1), rtol=1e-12, atol=1e-12)


# --- policy ---------------------------------------------------------------------------------------------------------

# (r, A): r = 1.5 with A = 2 is clipped at 1.2; r = 0.5 with A = -1 is clipped at 0.8.
RATIOS = [1.5, 0.5, 0.5, 1.5, 1.0]
ADVS = [2.0, 1.0, -1.0, -2.0, 3.0]


def _logps() -> tuple[torch.Tensor, torch.Tensor]:
    return t([math.log(r) for r in RATIOS]), t([0.0] * len(RATIOS))


def test_ppo_clip_objective_by_hand() -> None:
    logp, logp_old = _logps()
    adv = t(ADVS)
    # min(rA, clip(r, .8, 1.2) A)
    close(ti.ppo_clip_objective(logp, logp_old, adv), [min(3.0, 2.4), min(0.5, 0.8), min(-0.5, -0.8), -3.0, 3.0])
    # clip-higher: upper bound 1.28
    close(ti.ppo_clip_objective(logp, logp_old, adv, clip_eps_high=0.28)[0], 1.28 * 2.0)
    # dual clip c = 1.4 only where A < 0: max(-3, 1.4 * -2 = -2.8) = -2.8; r = 0.5, A = -1: max(-0.8, -1.4) = -0.8
    close(ti.ppo_clip_objective(logp, logp_old, adv, dual_clip=1.4), [2.4, 0.5, -0.8, -2.8, 3.0])


def test_ppo_clip_grad_by_hand() -> None:
    logp, logp_old = _logps()
    adv = t(ADVS)
    # 0 where the clip binds (A > 0, r > 1.2; A < 0, r < 0.8), else r A
    close(ti.ppo_clip_grad(logp, logp_old, adv), [0.0, 0.5, 0.0, -3.0, 3.0])
    close(ti.ppo_clip_grad(logp, logp_old, adv, dual_clip=1.4), [0.0, 0.5, 0.0, 0.0, 3.0])


def test_ppo_clip_grad_equals_autograd_including_exact_boundaries() -> None:
    # ratios exactly at 1 +- eps, at c, and inside/outside every region, both signs of A
    ratios = [0.5, 0.8, 0.9, 1.0, 1.2, 1.5, 3.0, 4.0]
    logp_old = torch.zeros(len(ratios) * 2, dtype=F64)
    base = t([math.log(r) for r in ratios] * 2)
    adv = t([1.5] * len(ratios) + [-1.5] * len(ratios))
    for kwargs in ({}, {"clip_eps_high": 0.5}, {"dual_clip": 3.0}):
        logp = base.clone().requires_grad_(True)
        # exact boundary ratios: use exp(logp) values computed the same way in both
        ti.ppo_clip_objective(logp, logp_old, adv, 0.2, **kwargs).sum().backward()
        assert logp.grad is not None
        torch.testing.assert_close(logp.grad, ti.ppo_clip_grad(base, logp_old, adv, 0.2, **kwargs), rtol=0, atol=0)


def test_aggregate_by_hand() -> None:
    values = t([[1.0, 2.0, 3.0], [4.0, math.nan, math.inf]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    close(ti.aggregate(values, mask, "seq-mean-token-mean"), (6 / 3 + 4 / 1) / 2)
    close(ti.aggregate(values, mask, "token-mean"), 10 / 4)
    close(ti.aggregate(values, mask, "seq-mean-token-sum"), (6 + 4) / 2)
    close(ti.aggregate(values, mask, "seq-mean-token-sum-norm"), 10 / (2 * 3))
    close(ti.aggregate(values, mask, "seq-mean-token-sum-norm", max_tokens=5), 10 / (2 * 5))
    assert ti.aggregate(values, mask).shape == ()


def test_policy_loss_ratio_one_is_minus_mean_advantage() -> None:
    logp = t([[-1.0, -2.0, -3.0], [-0.5, -0.1, -7.0]])
    adv = t([[1.0, -2.0, 4.0], [3.0, 0.5, 100.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    close(ti.policy_loss(logp, logp, adv, mask), -((1 - 2 + 4) / 3 + 3) / 2)
    close(ti.policy_loss(logp, logp, adv, mask, agg="token-mean"), -(1 - 2 + 4 + 3) / 4)


def test_policy_loss_clipped_by_hand() -> None:
    logp, logp_old = _logps()
    mask = torch.ones(1, 5, dtype=torch.bool)
    expected = -(2.4 + 0.5 - 0.8 - 2.8 + 3.0) / 5
    close(ti.policy_loss(logp[None], logp_old[None], t([ADVS]), mask, 0.2, None, 1.4), expected)


# --- KL -------------------------------------------------------------------------------------------------------------


def test_kl_estimators_by_hand() -> None:
    d = math.log(2)  # Delta = log pi - log pi_ref = ln 2, r = pi_ref / pi = 1/2
    logp, logp_ref = t([d, 0.0]), t([0.0, 0.0])
    close(ti.kl_estimate(logp, logp_ref, "k1"), [d, 0.0])
    close(ti.kl_estimate(logp, logp_ref, "k2"), [d * d / 2, 0.0])
    close(ti.kl_estimate(logp, logp_ref, "k3"), [0.5 - 1 + d, 0.0])
    close(ti.kl_estimate(t([30.0]), t([0.0]), "k1", log_ratio_clamp=20.0), [20.0])
    close(ti.kl_estimate(t([0.0]), t([30.0]), "k3", log_ratio_clamp=20.0), [math.exp(20) - 1 - 20])


def test_k3_is_accurate_near_zero() -> None:
    # k3 = Delta^2/2 - Delta^3/6 + ... ; at Delta = 1e-6 the naive exp(-D) - 1 + D loses ~10 digits.
    d = 1e-6
    expected = d * d / 2 - d**3 / 6 + d**4 / 24
    torch.testing.assert_close(ti.kl_estimate(t([d]), t([0.0]), "k3"), t([expected]), rtol=1e-9, atol=0)


def test_kl_exact_by_hand() -> None:
    logits = t([[0.0, 0.0]])  # p = [1/2, 1/2]
    logits_ref = t([[0.0, math.log(3)]])  # q = [1/4, 3/4]
    close(ti.kl_exact(logits, logits_ref), [0.5 * math.log(2) + 0.5 * math.log(2 / 3)])
    close(ti.kl_exact(logits, logits), [0.0])


# --- rewards --------------------------------------------------------------------------------------------------------


def test_kl_shaped_rewards_by_hand() -> None:
    logp = t([[0.5, -0.25, math.nan, 9.0]])
    logp_ref = t([[0.0, 0.0, 0.0, math.inf]])
    mask = torch.tensor([[1, 1, 0, 0]])
    scores = t([2.0])
    close(ti.kl_shaped_rewards(scores, logp, logp_ref, mask, 0.1), [[-0.05, 0.025 + 2.0, 0.0, 0.0]])
    after = ti.kl_shaped_rewards(scores, logp, logp_ref, mask, 0.1, score_position="after_last")
    close(after, [[-0.05, 0.025, 2.0, 0.0]])
    # k2 per token: 0.1 * Delta^2 / 2
    close(ti.kl_shaped_rewards(scores, logp, logp_ref, mask, 0.1, "k2"), [[-0.0125, -0.003125 + 2.0, 0.0, 0.0]])


def test_kl_shaped_rewards_last_valid_index_with_holes() -> None:
    logp = t([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0]])
    out = ti.kl_shaped_rewards(t([5.0, 7.0]), logp, torch.zeros_like(logp), mask, 0.5)
    close(out, [[0.0, 0.0, 5.0, 0.0], [0.0, -0.5 + 7.0, 0.0, 0.0]])
    after = ti.kl_shaped_rewards(t([5.0, 7.0]), logp, torch.zeros_like(logp), mask, 0.5, score_position="after_last")
    close(after, [[0.0, 0.0, 0.0, 5.0], [0.0, -0.5, 7.0, 0.0]])


def test_rlhf_objective_by_hand() -> None:
    scores = t([1.0, 2.0])
    logp = t([[0.5, 0.5], [0.2, math.nan]])
    logp_ref = torch.zeros(2, 2, dtype=F64)
    mask = torch.tensor([[1, 1], [1, 0]])
    close(ti.rlhf_objective(scores, logp, logp_ref, mask, 0.1), ((1 - 0.1 * 1.0) + (2 - 0.1 * 0.2)) / 2)
    ptx_logp, ptx_mask = t([[-1.0, -3.0]]), torch.ones(1, 2)
    close(ti.ptx_loss(ptx_logp, ptx_mask), 2.0)
    close(ti.ptx_loss(ptx_logp, ptx_mask, "seq-mean-token-sum"), 4.0)
    expected = ((1 - 0.1) + (2 - 0.02)) / 2 - 2.0 * 2.0
    close(ti.rlhf_objective(scores, logp, logp_ref, mask, 0.1, ptx_logp, ptx_mask, gamma=2.0), expected)


# --- reward model ---------------------------------------------------------------------------------------------------


def test_reward_model_loss_by_hand() -> None:
    close(ti.reward_model_loss(t([1.0, 0.0]), t([0.0, 0.0])), (math.log1p(math.exp(-1)) + math.log(2)) / 2)
    close(ti.reward_model_loss(t([1.0]), t([0.0]), 0.5), math.log1p(math.exp(-0.5)))
    close(
        ti.reward_model_loss(t([1.0, 1.0]), t([0.0, 0.0]), t([0.5, 1.0])),
        (math.log1p(math.exp(-0.5)) + math.log(2)) / 2,
    )
    # stable far in the tails: -log sigmoid(-1000) = 1000 (naive log(sigmoid) gives inf)
    close(ti.reward_model_loss(t([-1000.0]), t([0.0])), 1000.0)
    close(ti.reward_model_loss(t([1000.0]), t([0.0])), 0.0)


def test_ranking_loss_by_hand() -> None:
    # K = 3, pairs (0,1), (0,2), (1,2) with differences 1, 2, 1; normaliser C(3,2) = 3, not K/2 = 1.5
    expected_row0 = -(log_sigmoid(1) + log_sigmoid(2) + log_sigmoid(1)) / 3
    expected_row1 = -(3 * log_sigmoid(0)) / 3
    close(ti.ranking_loss(t([[2.0, 1.0, 0.0], [5.0, 5.0, 5.0]])), (expected_row0 + expected_row1) / 2)
    # K = 2 is the pairwise loss
    close(ti.ranking_loss(t([[1.0, 0.0]])), ti.reward_model_loss(t([1.0]), t([0.0])))


# --- advantages -----------------------------------------------------------------------------------------------------


def test_gae_by_hand() -> None:
    # gamma = 1, lam = 0.5, V = 0.5 everywhere, reward 1 at the end:
    # delta = [0, 0, 1 - 0.5]; A2 = 0.5, A1 = 0.25, A0 = 0.125; returns = A + V
    rewards, values = t([[0.0, 0.0, 1.0]]), t([[0.5, 0.5, 0.5]])
    out = ti.gae(rewards, values, torch.ones(1, 3), 1.0, 0.5)
    close(out.advantages, [[0.125, 0.25, 0.5]])
    close(out.returns, [[0.625, 0.75, 1.0]])


def test_gae_with_a_hole_and_discount_by_hand() -> None:
    # valid positions 0, 2 (position 1 is an observation token holding garbage); gamma = 0.9, lam = 0.8
    rewards, values = t([[1.0, math.nan, 2.0, 0.0]]), t([[0.5, math.inf, 1.0, 0.0]])
    mask = torch.tensor([[1, 0, 1, 0]])
    a2 = 2.0 + 0.9 * 0.0 - 1.0
    a0 = (1.0 + 0.9 * 1.0 - 0.5) + 0.9 * 0.8 * a2
    out = ti.gae(rewards, values, mask, 0.9, 0.8)
    close(out.advantages, [[a0, 0.0, a2, 0.0]])
    close(out.returns, [[a0 + 0.5, 0.0, a2 + 1.0, 0.0]])


def test_whiten_by_hand() -> None:
    x = t([[1.0, 2.0, math.nan], [3.0, 4.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    unbiased = [(v - 2.5) / math.sqrt(5 / 3 + 1e-8) for v in (1.0, 2.0, 3.0, 4.0)]
    close(ti.whiten(x, mask), [[unbiased[0], unbiased[1], 0.0], [unbiased[2], unbiased[3], 0.0]])
    pop = [(v - 2.5) / math.sqrt(1.25 + 1e-8) for v in (1.0, 2.0, 3.0, 4.0)]
    close(ti.whiten(x, mask, unbiased=False), [[pop[0], pop[1], 0.0], [pop[2], pop[3], 0.0]])
    kept = ti.whiten(x, mask, shift_mean=False)
    close(kept, [[unbiased[0] + 2.5, unbiased[1] + 2.5, 0.0], [unbiased[2] + 2.5, unbiased[3] + 2.5, 0.0]])


def test_grpo_advantages_by_hand() -> None:
    scores = t([1.0, 2.0, 3.0, 0.0, 0.0, 6.0])
    eps = 1e-6
    # group 0: mean 2, centred [-1, 0, 1], unbiased std 1; group 1: mean 2, centred [-2, -2, 4], var 24 / 2 = 12
    s1 = math.sqrt(12)
    expected = [-1 / (1 + eps), 0.0, 1 / (1 + eps), -2 / (s1 + eps), -2 / (s1 + eps), 4 / (s1 + eps)]
    close(ti.grpo_advantages(scores, 3), expected)
    close(ti.grpo_advantages(scores, 3, std_normalize=False), [-1.0, 0.0, 1.0, -2.0, -2.0, 4.0])
    pop1 = math.sqrt(2 / 3)
    close(ti.grpo_advantages(scores, 3, unbiased=False)[:3], [-1 / (pop1 + eps), 0.0, 1 / (pop1 + eps)])
    mask = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1], [0, 0], [1, 0]])
    with_mask = ti.grpo_advantages(scores, 3, mask=mask)
    close(with_mask, [[e * a for a in row] for e, row in zip(expected, mask.tolist(), strict=True)])


# --- value loss and KL control ---------------------------------------------------------------------------------------


def test_value_loss_by_hand() -> None:
    values, old, returns = t([[1.5, 1.0, math.nan]]), t([[1.0, 1.0, 0.0]]), t([[2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    # token 0: unclipped (1.5 - 2)^2 = 0.25, clipped V = 1.2 -> (1.2 - 2)^2 = 0.64 -> max 0.64; token 1: 1
    close(ti.value_loss(values, old, returns, mask), (0.5 * 0.64 + 0.5 * 1.0) / 2)
    close(ti.value_loss(values, old, returns, mask, clip_eps=None), (0.5 * 0.25 + 0.5 * 1.0) / 2)
    close(ti.value_loss(values, old, returns, mask, clip_eps=0.6), (0.5 * 0.25 + 0.5 * 1.0) / 2)


@pytest.mark.parametrize(
    ("kl", "expected"),
    [(9.0, 0.1 * (1 + 0.2 * 0.1)), (6.6, 0.1 * (1 + 0.1 * 0.1)), (0.0, 0.1 * (1 - 0.2 * 0.1))],
)
def test_adaptive_kl_update_by_hand(kl: float, expected: float) -> None:
    assert ti.adaptive_kl_update(0.1, kl, 6.0, 100, 1000) == pytest.approx(expected, rel=1e-15)
    assert ti.adaptive_kl_update(0.1, t(kl), 6.0, 100, 1000) == pytest.approx(expected, rel=1e-15)


def test_adaptive_kl_controller() -> None:
    ctl = ti.AdaptiveKLController(0.1, 6.0, horizon=1000)
    assert ctl.update(9.0, 100) == pytest.approx(0.102, rel=1e-15)
    assert ctl.value == pytest.approx(0.102, rel=1e-15)
    assert ctl.update(0.0, 100) == pytest.approx(0.102 * 0.98, rel=1e-15)
    assert "AdaptiveKLController(" in repr(ctl)
