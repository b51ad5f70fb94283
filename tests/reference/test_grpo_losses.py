"""CISPO, SAPO and GSPO: hand values, the gradients their stop-gradients define (autograd on the twin against
hand-computed gradients), the sympy identities, and errors that name the argument."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhf_oracle import derivations as D
from rlhf_oracle import reference as R
from rlhf_oracle import torch_impl as T

# two rows: row 0 has 2 valid tokens, row 1 has 3; log-ratios log 1.5, log 0.5 / log 1.1, log 3, 0
OLD = np.array([[-1.0, -2.0, 0.0], [-0.5, -1.5, -3.0]])
LOG_R = np.log([[1.5, 0.5, 1.0], [1.1, 3.0, 1.0]])
NEW = OLD + LOG_R
ADV = np.array([[1.0, -2.0, 7.0], [0.5, 1.0, -1.0]])
MASK = np.array([[True, True, False], [True, True, True]])


def _t(*xs: np.ndarray) -> list[torch.Tensor]:
    return [torch.tensor(x) for x in xs]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------------------------------------------------
# CISPO


def test_cispo_hand_values_absolute_cap_and_relative_bounds() -> None:
    # cap 1.2, no lower bound: weights 1.2, 0.5 | 1.1, 1.2, 1.0 ; token-mean over the 5 valid tokens
    w = np.array([[1.2, 0.5, 0.0], [1.1, 1.2, 1.0]])
    expected = -float(np.sum(np.where(MASK, w * ADV * NEW, 0.0))) / 5
    assert R.cispo_loss(NEW, OLD, ADV, MASK, weight_max=1.2) == pytest.approx(expected, rel=1e-14)
    # verl's [0.8, 1.2]: the 0.5 becomes 0.8
    w[0, 1] = 0.8
    expected = -float(np.sum(np.where(MASK, w * ADV * NEW, 0.0))) / 5
    assert R.cispo_loss(NEW, OLD, ADV, MASK, weight_max=1.2, weight_min=0.8) == pytest.approx(expected, rel=1e-14)


def test_cispo_gradient_never_vanishes_where_ppo_clip_would_zero_it() -> None:
    logp, old, adv, mask = _t(NEW, OLD, ADV, MASK)
    logp.requires_grad_(True)
    T.cispo_loss(logp, old, adv, mask, weight_max=1.2, weight_min=0.8).backward()
    w = torch.tensor([[1.2, 0.8, 0.0], [1.1, 1.2, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, -(w * adv * mask) / 5, rtol=1e-14, atol=0)
    # PPO-Clip (eps 0.2) zeroes token (0, 0) (A > 0, r = 1.5) and (1, 1) (A > 0, r = 3): CISPO does not
    g_ppo = R.ppo_clip_grad(NEW, OLD, ADV, 0.2)
    assert g_ppo[0, 0] == 0 and g_ppo[1, 1] == 0
    assert float(logp.grad[0, 0]) != 0 and float(logp.grad[1, 1]) != 0
    assert D.get("cispo_gradient").holds


# ----------------------------------------------------------------------------------------------------------------
# SAPO


def test_sapo_hand_value_and_the_reinforce_gradient_at_r_1() -> None:
    tau = {True: 1.0, False: 1.05}
    per_token = [
        [4 / tau[a > 0] * _sigmoid(tau[a > 0] * (r - 1)) * a for r, a in zip(rr, aa, strict=True)]
        for rr, aa in zip(np.exp(LOG_R), ADV, strict=True)
    ]
    expected = -((per_token[0][0] + per_token[0][1]) / 2 + sum(per_token[1]) / 3) / 2
    assert R.sapo_loss(NEW, OLD, ADV, MASK) == pytest.approx(expected, rel=1e-14)
    # at r = 1 (logp = logp_old) the gradient is -A times the aggregation weight: REINFORCE's
    logp, old, adv, mask = _t(OLD, OLD, ADV, MASK)
    logp.requires_grad_(True)
    T.sapo_loss(logp, old, adv, mask).backward()
    weights = torch.tensor([[1 / 4, 1 / 4, 0.0], [1 / 6, 1 / 6, 1 / 6]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, -adv * weights, rtol=1e-14, atol=1e-16)
    assert D.get("sapo_gate_gradient").holds


def test_sapo_saturates_without_nan_far_from_the_old_policy() -> None:
    logp, old, adv, mask = _t(OLD + np.array([[60.0, -60.0, 0.0], [0.0, 0.0, 0.0]]), OLD, ADV, MASK)
    logp.requires_grad_(True)
    loss = T.sapo_loss(logp, old, adv, mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert float(logp.grad[0, 0]) == 0.0  # the gate is flat at r = e^60


# ----------------------------------------------------------------------------------------------------------------
# GSPO


def test_gspo_uses_the_geometric_mean_of_the_valid_tokens() -> None:
    s0 = math.sqrt(1.5 * 0.5)  # row 0: two valid tokens
    s1 = (1.1 * 3.0 * 1.0) ** (1 / 3)
    for eps, high in ((0.2, 0.28), (3e-4, 4e-4)):

        def obj(s: float, a: float, eps: float = eps, high: float = high) -> float:
            return min(s * a, min(max(s, 1 - eps), 1 + high) * a)

        expected = -((obj(s0, 1.0) + obj(s0, -2.0)) / 2 + (obj(s1, 0.5) + obj(s1, 1.0) + obj(s1, -1.0)) / 3) / 2
        assert R.gspo_loss(NEW, OLD, ADV, MASK, clip_eps=eps, clip_eps_high=high) == pytest.approx(expected, rel=1e-14)


def test_gspo_token_gradient_is_s_times_a_where_unclipped() -> None:
    logp, old, adv, mask = _t(NEW, OLD, ADV, MASK)
    logp.requires_grad_(True)
    T.gspo_loss(logp, old, adv, mask, clip_eps=0.2, clip_eps_high=0.28).backward()
    s0, s1 = math.sqrt(0.75), 3.3 ** (1 / 3)  # 0.866 (inside [0.8, 1.28]); 1.489 (above)
    expected = torch.tensor(
        [[-s0 * 1.0 / 4, -s0 * -2.0 / 4, 0.0], [0.0, 0.0, -s1 * -1.0 / 6]], dtype=torch.float64
    )  # row 1: the clip binds for A > 0 (s above 1 + eps_high), not for A < 0
    torch.testing.assert_close(logp.grad, expected, rtol=1e-14, atol=1e-16)


def test_gspo_token_equals_full_gradient_gspo_for_a_constant_advantage() -> None:
    adv_seq = np.repeat(ADV[:, :1], 3, axis=1)
    logp, old, adv, mask = _t(NEW, OLD, adv_seq, MASK)
    logp.requires_grad_(True)
    T.gspo_loss(logp, old, adv, mask, clip_eps=0.5, clip_eps_high=0.5).backward()
    # GSPO eq. 5 written with the full gradient of s_i (autograd through the sequence mean), per sequence
    x = torch.tensor(NEW, requires_grad=True)
    seq = torch.where(mask, x - old, 0.0).sum(-1) / mask.sum(-1)
    s = torch.exp(seq)
    a = adv[:, 0]
    per_seq = torch.minimum(s * a, s.clamp(0.5, 1.5) * a)
    (-per_seq.mean()).backward()
    torch.testing.assert_close(logp.grad, x.grad, rtol=1e-14, atol=1e-16)
    assert D.get("gspo_token_equals_gspo").holds


def test_gspo_log_ratio_clamp_saturates_and_stops_the_gradient() -> None:
    far = OLD + np.array([[30.0, 30.0, 0.0], [0.1, 0.1, 0.1]])
    value = R.gspo_loss(far, OLD, -np.abs(ADV), MASK, clip_eps=0.2, clip_eps_high=0.28, log_ratio_clamp=10.0)
    s1 = math.exp(0.1)
    a = -np.abs(ADV)
    row0 = (math.exp(10.0) * a[0, 0] + math.exp(10.0) * a[0, 1]) / 2  # A < 0: min picks the unclipped e^10 A
    row1 = sum(min(s1 * x, min(s1, 1.28) * x) for x in a[1]) / 3
    assert value == pytest.approx(-(row0 + row1) / 2, rel=1e-14)
    logp, old, adv, mask = _t(far, OLD, a, MASK)
    logp.requires_grad_(True)
    T.gspo_loss(logp, old, adv, mask, clip_eps=0.2, clip_eps_high=0.28, log_ratio_clamp=10.0).backward()
    assert float(logp.grad[0].abs().sum()) == 0.0 and float(logp.grad[1].abs().sum()) > 0


# ----------------------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("impl", [R, T], ids=["reference", "torch"])
def test_errors_name_the_argument(impl: object) -> None:
    conv = (lambda a: torch.as_tensor(a)) if impl is T else (lambda a: a)
    args = [conv(a) for a in (NEW, OLD, ADV, MASK)]
    cases = [
        ("cispo_loss", {"weight_max": 0.0}, r"cispo_loss: 'weight_max' must be > 0, got 0.0"),
        ("cispo_loss", {"weight_min": 2.0, "weight_max": 1.2}, r"cispo_loss: 'weight_min' must be < weight_max"),
        ("sapo_loss", {"tau_neg": -1.0}, r"sapo_loss: 'tau_neg' must be > 0, got -1.0"),
        ("gspo_loss", {"clip_eps": 1.5}, r"gspo_loss: 'clip_eps' must be < 1, got 1.5"),
        ("gspo_loss", {"log_ratio_clamp": 0.0}, r"gspo_loss: 'log_ratio_clamp' must be > 0"),
        ("gspo_loss", {"agg": "sum"}, r"gspo_loss: 'agg' must be one of"),
    ]
    for name, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            getattr(impl, name)(*args, **kwargs)
    nan = conv(np.where(MASK, np.nan, 0.0))
    with pytest.raises(ValueError, match=r"sapo_loss: 'logp' contains NaN or inf at a valid"):
        impl.sapo_loss(nan, *args[1:])  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------------------------------
# rollout importance-sampling weights

# engine log-probs: token ratios pi_old / mu = 1.5, 0.25 | 3, 1, 0.8 (row 0 has 2 valid tokens)
LOG_RHO = np.log([[1.5, 0.25, 1.0], [3.0, 1.0, 0.8]])
ROLLOUT = OLD - LOG_RHO


def test_token_truncate_mask_reject_by_hand() -> None:
    rho = np.exp(LOG_RHO)
    got = R.rollout_is_weights(OLD, ROLLOUT, MASK)  # token TIS, cap 2
    np.testing.assert_allclose(got, np.where(MASK, np.minimum(rho, 2.0), 0.0), rtol=1e-15)
    got = R.rollout_is_weights(OLD, ROLLOUT, MASK, mode="mask", upper=2.0, lower=0.5)  # IcePop-style band
    np.testing.assert_allclose(got, [[1.5, 0.0, 0.0], [0.0, 1.0, 0.8]], rtol=1e-15)
    got = R.rollout_is_weights(OLD, ROLLOUT, MASK, mode="reject", upper=2.0, lower=0.5)
    np.testing.assert_array_equal(got, [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    got = R.rollout_is_weights(OLD, ROLLOUT, MASK, upper=2.0, lower=0.5)  # truncation from both sides
    np.testing.assert_allclose(got, [[1.5, 0.5, 0.0], [2.0, 1.0, 0.8]], rtol=1e-15)


def test_sequence_product_and_geometric_mean_by_hand() -> None:
    prod = R.rollout_is_weights(OLD, ROLLOUT, MASK, level="sequence", upper=5.0)
    np.testing.assert_allclose(prod, [[0.375, 0.375, 0.0], [2.4, 2.4, 2.4]], rtol=1e-14)
    geo = R.rollout_is_weights(OLD, ROLLOUT, MASK, level="sequence", upper=5.0, seq_ratio="geometric")
    g0, g1 = 0.375**0.5, 2.4 ** (1 / 3)
    np.testing.assert_allclose(geo, [[g0, g0, 0.0], [g1, g1, g1]], rtol=1e-14)


def test_a_product_beyond_float64_is_still_truncated_or_masked() -> None:
    huge = np.array([[400.0] * 3])  # exp(1200): inf in float64, float32 and bf16
    m = np.ones((1, 3), dtype=bool)
    for impl, conv in ((R, lambda a: a), (T, torch.as_tensor)):
        for dtype in (torch.float64, torch.float32, torch.bfloat16):
            old, rollout = conv(np.zeros((1, 3))), conv(-huge)
            if impl is T:
                old, rollout = old.to(dtype), rollout.to(dtype)
            trunc = impl.rollout_is_weights(old, rollout, conv(m), level="sequence", upper=3.0)
            masked = impl.rollout_is_weights(old, rollout, conv(m), level="sequence", mode="mask", upper=3.0)
            as64 = (lambda x: x.double().numpy()) if impl is T else np.asarray
            assert np.allclose(as64(trunc), 3.0) and not as64(masked).any()


def test_twin_weights_are_detached_and_equal_the_reference() -> None:
    old = torch.tensor(OLD, requires_grad=True)
    for kwargs in ({}, {"level": "sequence", "mode": "mask", "upper": 3.0}, {"mode": "reject", "lower": 0.5}):
        w = T.rollout_is_weights(old, torch.tensor(ROLLOUT), torch.tensor(MASK), **kwargs)  # type: ignore[arg-type]
        assert not w.requires_grad
        np.testing.assert_allclose(w.numpy(), R.rollout_is_weights(OLD, ROLLOUT, MASK, **kwargs), rtol=1e-14)  # type: ignore[arg-type]


@pytest.mark.parametrize("impl", [R, T], ids=["reference", "torch"])
def test_rollout_errors_name_the_argument(impl: object) -> None:
    conv = (lambda a: torch.as_tensor(a)) if impl is T else (lambda a: a)
    f = impl.rollout_is_weights  # type: ignore[attr-defined]
    args = [conv(a) for a in (OLD, ROLLOUT, MASK)]
    with pytest.raises(ValueError, match=r"rollout_is_weights: 'lower' must be < upper = 2.0, got 3.0"):
        f(*args, lower=3.0)
    with pytest.raises(ValueError, match=r"rollout_is_weights: 'mode' must be one of \('truncate', 'mask', 'reject'\)"):
        f(*args, mode="clip")
    with pytest.raises(ValueError, match=r"rollout_is_weights: 'seq_ratio' must be one of"):
        f(*args, seq_ratio="mean")
    with pytest.raises(ValueError, match=r"rollout_is_weights: 'logp_rollout' has shape \(2, 2\)"):
        f(args[0], conv(np.zeros((2, 2))), args[2])


# ----------------------------------------------------------------------------------------------------------------
# policy_loss(weights=): decoupled PPO / TIS applied to PPO


def test_policy_loss_weights_multiply_the_clipped_term_and_carry_no_gradient() -> None:
    w = np.array([[2.0, 0.5, np.nan], [1.0, 0.0, 3.0]])
    r = np.exp(LOG_R)
    clipped = np.minimum(r * ADV, np.clip(r, 0.8, 1.2) * ADV)  # eps 0.2
    per_row = [(2.0 * clipped[0, 0] + 0.5 * clipped[0, 1]) / 2, (clipped[1, 0] + 3.0 * clipped[1, 2]) / 3]
    assert R.policy_loss(NEW, OLD, ADV, MASK, weights=w) == pytest.approx(-sum(per_row) / 2, rel=1e-14)
    logp, old, adv, mask = _t(NEW, OLD, ADV, MASK)
    weights = torch.tensor(np.nan_to_num(w), requires_grad=True)
    logp.requires_grad_(True)
    T.policy_loss(logp, old, adv, mask, weights=weights).backward()
    assert weights.grad is None  # detached
    g = R.ppo_clip_grad(NEW, OLD, ADV) * np.nan_to_num(w) * np.array([[1 / 4, 1 / 4, 0], [1 / 6, 1 / 6, 1 / 6]])
    torch.testing.assert_close(logp.grad, -torch.tensor(g), rtol=1e-14, atol=1e-16)
    with pytest.raises(ValueError, match=r"policy_loss: 'weights' contains NaN or inf at a valid"):
        R.policy_loss(NEW, OLD, ADV, MASK, weights=np.full((2, 3), np.nan))
