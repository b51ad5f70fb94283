"""Small cases worked out by hand, with plain arithmetic in the test (never copied from the output)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhf_oracle import reference as ref

NAN = float("nan")


def log_sigmoid(x: float) -> float:
    return -math.log(1.0 + math.exp(-x))


# ---------------------------------------------------------------- PPO-Clip


def test_ppo_clip_objective_each_region() -> None:
    # (ratio, advantage) -> min(rA, clip(r, 0.8, 1.2) A)
    cases = [
        (1.5, 2.0, min(1.5 * 2.0, 1.2 * 2.0)),  # A>0 above the range: clipped to 2.4
        (0.5, 2.0, min(0.5 * 2.0, 0.8 * 2.0)),  # A>0 below: unclipped 1.0 (pessimistic)
        (0.5, -2.0, min(0.5 * -2.0, 0.8 * -2.0)),  # A<0 below: clipped to -1.6
        (1.5, -2.0, min(1.5 * -2.0, 1.2 * -2.0)),  # A<0 above: unclipped -3.0
        (1.1, 1.0, 1.1),  # inside
    ]
    ratio = np.array([c[0] for c in cases])
    adv = np.array([c[1] for c in cases])
    got = ref.ppo_clip_objective(np.log(ratio), np.zeros(len(cases)), adv)
    np.testing.assert_allclose(got, [2.4, 1.0, -1.6, -3.0, 1.1], rtol=1e-12)
    np.testing.assert_allclose(got, [c[2] for c in cases], rtol=1e-12)


def test_ppo_clip_grad_each_region() -> None:
    ratio = np.array([1.5, 0.5, 0.5, 1.5, 1.1])
    adv = np.array([2.0, 2.0, -2.0, -2.0, 1.0])
    got = ref.ppo_clip_grad(np.log(ratio), np.zeros(5), adv)
    # d(rA)/dlogp = rA where unclipped; 0 where the clip binds
    np.testing.assert_allclose(got, [0.0, 0.5 * 2.0, 0.0, 1.5 * -2.0, 1.1], rtol=1e-12)


def test_asymmetric_and_dual_clip() -> None:
    # clip-higher: upper bound 1.28 (DAPO eps_high = 0.28)
    got = ref.ppo_clip_objective(np.log([1.5]), [0.0], [1.0], 0.2, clip_eps_high=0.28)
    assert got[0] == pytest.approx(1.28)
    # dual clip c = 3, A = -1: r = 5 -> max(min(-5, -1.2), -3) = -3; r = 2 -> -2 (below c); A>0 untouched
    got = ref.ppo_clip_objective(np.log([5.0, 2.0, 5.0]), [0.0, 0.0, 0.0], [-1.0, -1.0, 1.0], dual_clip=3.0)
    np.testing.assert_allclose(got, [-3.0, -2.0, 1.2], rtol=1e-12)
    grad = ref.ppo_clip_grad(np.log([5.0, 2.0]), [0.0, 0.0], [-1.0, -1.0], dual_clip=3.0)
    np.testing.assert_allclose(grad, [0.0, -2.0], rtol=1e-12)


# ---------------------------------------------------------------- aggregation and the policy loss

VALUES = np.array([[1.0, 2.0, 3.0], [4.0, NAN, 10.0]])
MASK = np.array([[1, 1, 1], [1, 0, 1]])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("seq-mean-token-mean", ((1 + 2 + 3) / 3 + (4 + 10) / 2) / 2),
        ("token-mean", (1 + 2 + 3 + 4 + 10) / 5),
        ("seq-mean-token-sum", ((1 + 2 + 3) + (4 + 10)) / 2),
        ("seq-mean-token-sum-norm", ((1 + 2 + 3) + (4 + 10)) / (2 * 3)),
    ],
)
def test_aggregate_modes(mode: str, expected: float) -> None:
    assert ref.aggregate(VALUES, MASK, mode) == pytest.approx(expected, rel=1e-14)


def test_aggregate_constant_normaliser() -> None:
    got = ref.aggregate(VALUES, MASK, "seq-mean-token-sum-norm", max_tokens=10)
    assert got == pytest.approx(((1 + 2 + 3) + (4 + 10)) / (2 * 10), rel=1e-14)


def test_policy_loss_at_ratio_one_is_minus_mean_advantage() -> None:
    adv = np.array([[1.0, -3.0, 0.5], [2.0, 7.0, NAN]])
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    logp = np.array([[-1.0, -2.0, -0.5], [-0.1, -3.0, NAN]])
    got = ref.policy_loss(logp, logp, adv, mask)
    assert got == pytest.approx(-((1 - 3 + 0.5) / 3 + (2 + 7) / 2) / 2, rel=1e-14)


# ---------------------------------------------------------------- KL


def test_kl_estimators_at_log_two() -> None:
    delta = math.log(2.0)  # pi/pi_ref = 2, r = pi_ref/pi = 1/2
    assert ref.kl_estimate([delta], [0.0], "k1")[0] == pytest.approx(delta)
    assert ref.kl_estimate([delta], [0.0], "k2")[0] == pytest.approx(delta**2 / 2)
    assert ref.kl_estimate([delta], [0.0], "k3")[0] == pytest.approx((0.5 - 1) - math.log(0.5))


def test_kl_exact_two_symbols() -> None:
    # p = softmax([0, ln 3]) = (1/4, 3/4), q = (1/2, 1/2)
    got = ref.kl_exact([[0.0, math.log(3.0)]], [[0.0, 0.0]])
    assert got[0] == pytest.approx(0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5), rel=1e-14)


def test_token_logprobs_and_entropy() -> None:
    logits = np.array([[[0.0, math.log(3.0)], [5.0, 5.0]]])
    got = ref.token_logprobs(logits, np.array([[1, 0]]))
    np.testing.assert_allclose(got, [[math.log(0.75), math.log(0.5)]], rtol=1e-14)
    # temperature 2 on doubled logits gives the same distribution
    np.testing.assert_allclose(ref.token_logprobs(2 * logits, np.array([[1, 0]]), temperature=2.0), got, rtol=1e-14)
    h = ref.entropy_from_logits(logits)
    np.testing.assert_allclose(h, [[-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), math.log(2.0)]], rtol=1e-14)


# ---------------------------------------------------------------- rewards and the InstructGPT objective


def test_kl_shaped_rewards_last_and_after_last() -> None:
    logp = np.array([[-1.0, -2.0, -0.5, NAN], [-1.0, NAN, -3.0, NAN]])
    logp_ref = np.array([[-1.5, -1.0, -0.5, NAN], [-2.0, NAN, -1.0, NAN]])
    mask = np.array([[1, 1, 1, 0], [1, 0, 1, 0]])
    beta = 0.1
    got = ref.kl_shaped_rewards(np.array([2.0, -1.0]), logp, logp_ref, mask, beta)
    expected = np.array(
        [
            [-beta * 0.5, -beta * -1.0, -beta * 0.0 + 2.0, 0.0],
            [-beta * 1.0, 0.0, -beta * -2.0 - 1.0, 0.0],  # the hole at t=1 gets nothing
        ]
    )
    np.testing.assert_allclose(got, expected, rtol=1e-14)
    got = ref.kl_shaped_rewards(np.array([2.0, -1.0]), logp, logp_ref, mask, beta, score_position="after_last")
    expected[0, 2] -= 2.0
    expected[0, 3] = 2.0
    expected[1, 2] += 1.0
    expected[1, 3] = -1.0
    np.testing.assert_allclose(got, expected, rtol=1e-14)


def test_rlhf_objective_and_ptx() -> None:
    logp = np.array([[-1.0, -2.0], [-0.5, NAN]])
    logp_ref = np.array([[-1.5, -1.0], [-1.0, NAN]])
    mask = np.array([[1, 1], [1, 0]])
    ptx = np.array([[-2.0, -4.0, -6.0]])
    beta, gamma = 0.02, 27.8
    seq = [3.0 - beta * (0.5 + -1.0), 1.0 - beta * 0.5]
    ptx_term = gamma * (-2.0 - 4.0 - 6.0) / 3
    got = ref.rlhf_objective(np.array([3.0, 1.0]), logp, logp_ref, mask, beta, ptx, np.ones((1, 3)), gamma)
    assert got == pytest.approx(sum(seq) / 2 + ptx_term, rel=1e-14)
    assert ref.ptx_loss(ptx, np.ones((1, 3))) == pytest.approx(4.0)


# ---------------------------------------------------------------- reward model


def test_reward_model_loss_with_margin() -> None:
    got = ref.reward_model_loss(np.array([1.0, 0.0]), np.array([0.0, 2.0]), margin=0.5)
    assert got == pytest.approx(-(log_sigmoid(1.0 - 0.5) + log_sigmoid(-2.0 - 0.5)) / 2, rel=1e-14)


def test_ranking_loss_three_answers() -> None:
    # pairs (i<j): 3-2 = 1, 3-0 = 3, 2-0 = 2; C(3, 2) = 3 comparisons
    got = ref.ranking_loss(np.array([[3.0, 2.0, 0.0]]))
    assert got == pytest.approx(-(log_sigmoid(1.0) + log_sigmoid(3.0) + log_sigmoid(2.0)) / 3, rel=1e-14)


def test_ranking_loss_two_answers_is_the_pairwise_loss() -> None:
    r = np.array([[0.3, -1.2], [2.0, 2.5]])
    assert ref.ranking_loss(r) == pytest.approx(ref.reward_model_loss(r[:, 0], r[:, 1]), rel=1e-14)


# ---------------------------------------------------------------- advantages and values


def test_gae_three_steps() -> None:
    rewards = np.array([[0.0, 0.0, 1.0]])
    values = np.array([[0.5, 0.6, 0.7]])
    d2 = 1.0 - 0.7  # no bootstrap after the last token
    d1 = 0.0 + 0.7 - 0.6
    d0 = 0.0 + 0.6 - 0.5
    a2 = d2
    a1 = d1 + 0.95 * a2
    a0 = d0 + 0.95 * a1
    got = ref.gae(rewards, values, np.ones((1, 3)), gamma=1.0, lam=0.95)
    np.testing.assert_allclose(got.advantages, [[a0, a1, a2]], rtol=1e-14)
    np.testing.assert_allclose(got.returns, [[a0 + 0.5, a1 + 0.6, a2 + 0.7]], rtol=1e-14)


def test_gae_skips_holes() -> None:
    rewards = np.array([[0.0, 99.0, 0.0, 1.0, 5.0]])
    values = np.array([[0.5, NAN, 0.6, 0.7, 3.0]])
    mask = np.array([[1, 0, 1, 1, 0]])
    got = ref.gae(rewards, values, mask, gamma=0.9, lam=0.5)
    compact = ref.gae(np.array([[0.0, 0.0, 1.0]]), np.array([[0.5, 0.6, 0.7]]), np.ones((1, 3)), gamma=0.9, lam=0.5)
    np.testing.assert_allclose(got.advantages[0, [0, 2, 3]], compact.advantages[0], rtol=1e-14)
    assert got.advantages[0, 1] == 0.0 and got.advantages[0, 4] == 0.0


def test_whiten_matches_the_printed_vector() -> None:
    # Huang et al. 2023, "The N Implementation Details of RLHF with PPO": shift_mean=False, population variance
    rewards = np.array([[1.2, 1.3, 1.4], [1.5, 1.6, 1.7], [1.8, 1.9, 2.0]])
    printed = np.array([[0.0508, 0.4381, 0.8254], [1.2127, 1.6000, 1.9873], [2.3746, 2.7619, 3.1492]])
    got = ref.whiten(rewards, np.ones((3, 3)), shift_mean=False, unbiased=False)
    np.testing.assert_allclose(got, printed, atol=5e-5)


def test_whiten_hand() -> None:
    x = np.array([[1.0, 2.0, NAN], [3.0, NAN, NAN]])
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    mean, var = 2.0, ((1 - 2) ** 2 + 0 + (3 - 2) ** 2) / 2  # Bessel: n - 1 = 2
    got = ref.whiten(x, mask)
    s = math.sqrt(var + 1e-8)
    np.testing.assert_allclose(got, [[(1 - mean) / s, (2 - mean) / s, 0.0], [(3 - mean) / s, 0.0, 0.0]], rtol=1e-14)


def test_value_loss_clip_is_a_max() -> None:
    values = np.array([[1.0, 0.0]])
    old = np.array([[0.0, 0.0]])
    returns = np.array([[2.0, -1.0]])
    # t0: unclipped (1-2)^2 = 1; clipped V = 0 + clip(1, -.2, .2) = 0.2 -> (0.2-2)^2 = 3.24; max = 3.24
    # t1: both (0+1)^2 = 1
    got = ref.value_loss(values, old, returns, np.ones((1, 2)))
    assert got == pytest.approx(0.5 * (3.24 + 1.0) / 2, rel=1e-14)
    assert ref.value_loss(values, old, returns, np.ones((1, 2)), clip_eps=None) == pytest.approx(0.5 * (1 + 1) / 2)


def test_adaptive_kl_update() -> None:
    # Ziegler et al. 2019: e = clip(12/6 - 1, -0.2, 0.2) = 0.2; beta (1 + 0.2 * 512 / 10000)
    assert ref.adaptive_kl_update(0.1, 12.0, 6.0, 512, 10000) == pytest.approx(0.1 * (1 + 0.2 * 0.0512))
    assert ref.adaptive_kl_update(0.1, 5.4, 6.0, 512, 10000) == pytest.approx(0.1 * (1 - 0.1 * 0.0512))
    ctl = ref.AdaptiveKLController(0.15, 6.0)
    ctl.update(0.0, 10000)  # e = -0.2 over a full horizon
    assert ctl.value == pytest.approx(0.15 * 0.8)


def test_grpo_advantages() -> None:
    scores = np.array([1.0, 0.0, 0.0, 2.0, 4.0, 6.0])
    g1_std = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    expected = [(2 / 3) / (g1_std + 1e-6), (-1 / 3) / (g1_std + 1e-6), (-1 / 3) / (g1_std + 1e-6)]
    expected += [-2 / (2 + 1e-6), 0.0, 2 / (2 + 1e-6)]  # group (2, 4, 6): mean 4, Bessel std 2
    np.testing.assert_allclose(ref.grpo_advantages(scores, 3), expected, rtol=1e-14)
    np.testing.assert_allclose(ref.grpo_advantages(scores, 3, std_normalize=False), [2 / 3, -1 / 3, -1 / 3, -2, 0, 2])
    per_token = ref.grpo_advantages(scores[:3], 3, mask=np.array([[1, 1], [1, 0], [0, 0]]))
    np.testing.assert_allclose(per_token, [[expected[0]] * 2, [expected[1], 0.0], [0.0, 0.0]], rtol=1e-14)
