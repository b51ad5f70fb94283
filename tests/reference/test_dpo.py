"""The DPO loss: hand values, identities with the Bradley-Terry loss at the closed-form optimum, sympy, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

from rlhf_oracle import derivations as D
from rlhf_oracle import reference as R

FINITE = st.floats(-60.0, 0.0, allow_nan=False, allow_infinity=False)


def _one(x: float) -> np.ndarray:
    return np.array([x])


def test_policy_equal_to_reference_gives_log_2() -> None:
    # h = 0: -log sigma(0) = log 2 for every beta and smoothing
    for beta in (0.01, 0.1, 1.0):
        for eps in (0.0, 0.2, 0.5):
            loss = R.dpo_loss(_one(-3.0), _one(-7.0), _one(-3.0), _one(-7.0), beta=beta, label_smoothing=eps)
            assert loss == pytest.approx(math.log(2.0), rel=1e-15)


def test_hand_value() -> None:
    # h = (-1 - -1.5) - (-2 - -1.5) = 1; beta = 1: log(1 + e^-1)
    loss = R.dpo_loss(_one(-1.0), _one(-2.0), _one(-1.5), _one(-1.5), beta=1.0)
    assert loss == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-15)
    # label smoothing 0.5: the mean of log(1 + e^-1) and log(1 + e^1)
    half = R.dpo_loss(_one(-1.0), _one(-2.0), _one(-1.5), _one(-1.5), beta=1.0, label_smoothing=0.5)
    assert half == pytest.approx(0.5 * (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))), rel=1e-15)


def test_batch_mean_and_beta_scaling() -> None:
    w, lo, rw, rl = np.array([-1.0, -4.0]), np.array([-2.0, -3.0]), np.array([-1.5, -3.5]), np.array([-1.5, -3.5])
    # h = [1, -1]; beta = 0.5: mean(log(1 + e^-0.5), log(1 + e^0.5))
    expected = 0.5 * (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(0.5)))
    assert R.dpo_loss(w, lo, rw, rl, beta=0.5) == pytest.approx(expected, rel=1e-15)


@given(FINITE, FINITE, FINITE, FINITE, st.sampled_from([0.05, 0.1, 1.0]))
def test_swapping_chosen_and_rejected_changes_the_loss_by_beta_h(w: float, lo: float, rw: float, rl: float,
                                                                  beta: float) -> None:  # fmt: skip
    h = (w - rw) - (lo - rl)
    forward = R.dpo_loss(_one(w), _one(lo), _one(rw), _one(rl), beta=beta)
    swapped = R.dpo_loss(_one(lo), _one(w), _one(rl), _one(rw), beta=beta)
    assert swapped - forward == pytest.approx(beta * h, rel=1e-9, abs=1e-9)


@given(st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3), st.sampled_from([0.1, 0.5, 2.0]))
def test_at_the_optimum_dpo_equals_the_reward_model_loss_with_the_true_reward(r: list[float], beta: float) -> None:
    rewards = np.array(r)
    pi_ref = np.array([0.2, 0.5, 0.3])
    pi_star = pi_ref * np.exp(rewards / beta)
    pi_star /= pi_star.sum()
    for w, lo in ((0, 1), (0, 2), (2, 1)):
        dpo = R.dpo_loss(np.log(pi_star[[w]]), np.log(pi_star[[lo]]), np.log(pi_ref[[w]]), np.log(pi_ref[[lo]]),
                         beta=beta)  # fmt: skip
        assert dpo == pytest.approx(R.reward_model_loss(rewards[[w]], rewards[[lo]]), rel=1e-9, abs=1e-12)


def test_sympy_optimum_holds_and_matches_numbers() -> None:
    d = D.get("dpo_optimum")
    assert d.holds and d.page == "dpo"
    e = d.exprs
    rewards = dict(zip(e["r"], (1, -2, sp.Rational(1, 2)), strict=True))
    priors = dict(zip(e["rho"], (sp.Rational(1, 5), sp.Rational(1, 2), sp.Rational(3, 10)), strict=True))
    values = {e["beta"]: sp.Rational(1, 3), **rewards, **priors}
    pi = [float(p.subs(values)) for p in e["pi_star"]]
    assert sum(pi) == pytest.approx(1.0, rel=1e-15)
    beta = 1 / 3
    loss = R.dpo_loss(np.log([pi[0]]), np.log([pi[1]]), np.log([0.2]), np.log([0.5]), beta=beta)
    assert loss == pytest.approx(math.log1p(math.exp(-(1.0 - -2.0))), rel=1e-9)


def test_gradient_matches_finite_differences() -> None:
    w, lo, rw, rl = np.array([-1.0, -4.0, -2.0]), np.array([-2.0, -3.0, -9.0]), np.full(3, -2.5), np.full(3, -3.0)
    beta, eps = 0.7, 0.1
    h = (w - rw) - (lo - rl)
    sig = 1.0 / (1.0 + np.exp(-beta * h))
    analytic = -(beta / 3) * ((1 - eps) * (1 - sig) - eps * sig)  # d/d logp_chosen
    step = 1e-6
    for i in range(3):
        up, down = w.copy(), w.copy()
        up[i] += step
        down[i] -= step
        fd = (R.dpo_loss(up, lo, rw, rl, beta=beta, label_smoothing=eps)
              - R.dpo_loss(down, lo, rw, rl, beta=beta, label_smoothing=eps)) / (2 * step)  # fmt: skip
        assert fd == pytest.approx(analytic[i], rel=1e-6)


def test_huge_gaps_are_finite() -> None:
    assert R.dpo_loss(_one(-1e4), _one(0.0), _one(0.0), _one(0.0), beta=1.0) == pytest.approx(1e4, rel=1e-12)
    assert R.dpo_loss(_one(1e4), _one(0.0), _one(0.0), _one(0.0), beta=1.0) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": 0.0}, "'beta' must be > 0"),
        ({"beta": -1.0}, "'beta' must be > 0"),
        ({"label_smoothing": -0.1}, "'label_smoothing' must be >= 0"),
        ({"label_smoothing": 0.6}, "'label_smoothing' must be in [0, 0.5]"),
    ],
)
def test_bad_hyper_parameters(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        R.dpo_loss(_one(-1.0), _one(-2.0), _one(-1.0), _one(-2.0), **kwargs)


def test_bad_shapes_and_values() -> None:
    with pytest.raises(ValueError, match="'logp_rejected'"):
        R.dpo_loss(np.zeros(2), np.zeros(3), np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="'ref_logp_chosen'"):
        R.dpo_loss(np.zeros(2), np.zeros(2), np.array([0.0, np.nan]), np.zeros(2))
    with pytest.raises(ValueError, match="B >= 1"):
        R.dpo_loss(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0))
