"""Numbers printed in the sources, reproduced with the reference.

Schulman, "Approximating KL Divergence" (2020): q = N(0, 1), p = N(mu, 1), samples x ~ q, r = p(x)/q(x);
true KL = mu^2/2. The expectations are computed by Gauss-Hermite quadrature (exact for these smooth integrands to
far below the tolerances), so they are the *exact* bias and stdev, next to the post's 10^7-sample Monte Carlo table.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhf_oracle import reference as ref

NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(120)
WEIGHTS = WEIGHTS / math.sqrt(2 * math.pi)  # E_{x ~ N(0,1)}[f(x)] = sum w f(x)


def moments(mu: float, kind: str) -> tuple[float, float]:
    """(bias / true, stdev / true) of the estimator under x ~ N(0, 1), by quadrature."""
    x = NODES
    log_q = -0.5 * x**2  # common constants cancel in the log-ratio
    log_p = -0.5 * (x - mu) ** 2
    k = ref.kl_estimate(log_q, log_p, kind)  # Delta = log q - log p = -log r: the policy q samples the tokens
    mean = float(np.sum(WEIGHTS * k))
    var = float(np.sum(WEIGHTS * (k - mean) ** 2))
    true = mu**2 / 2
    return (mean - true) / true, math.sqrt(var) / true


# (mu, kind, printed bias/true, printed stdev/true, closed-form bias/true, closed-form stdev/true)
TABLE = [
    (0.1, "k1", 0.0, 20.0, 0.0, 2 / 0.1),
    (0.1, "k2", 0.002, 1.42, 0.1**2 / 4, math.sqrt(2 + 0.1**2)),
    (0.1, "k3", 0.0, 1.42, 0.0, math.sqrt(math.exp(0.01) - 1 - 0.01) / 0.005),
    (1.0, "k1", 0.0, 2.0, 0.0, 2.0),
    (1.0, "k2", 0.25, 1.73, 0.25, math.sqrt(3.0)),
    (1.0, "k3", 0.0, 1.7, 0.0, math.sqrt(math.e - 2) / 0.5),
]


@pytest.mark.parametrize(("mu", "kind", "bias_printed", "std_printed", "bias_exact", "std_exact"), TABLE)
def test_schulman_kl_tables(mu, kind, bias_printed, std_printed, bias_exact, std_exact) -> None:
    bias, std = moments(mu, kind)
    assert bias == pytest.approx(bias_exact, abs=1e-9)
    assert std == pytest.approx(std_exact, rel=1e-9)
    # the printed table is a Monte Carlo estimate rounded to 2-3 digits (k2's 0.002 is MC for 0.0025)
    assert bias == pytest.approx(bias_printed, abs=2e-3)
    assert std == pytest.approx(std_printed, rel=6e-3)


def test_dapo_clip_higher_example() -> None:
    """DAPO §3.1: with eps = 0.2 a token with pi_old = 0.01 can rise only to 0.012, one at 0.9 to 1.08."""
    for p_old, cap in ((0.01, 0.012), (0.9, 1.08)):
        # the objective stops growing (gradient 0) once pi > (1 + eps) pi_old, for A > 0
        just_above = math.log(cap * 1.0001)
        assert ref.ppo_clip_grad([just_above], [math.log(p_old)], [1.0])[0] == 0.0
        just_below = math.log(cap * 0.9999)
        assert ref.ppo_clip_grad([just_below], [math.log(p_old)], [1.0])[0] > 0.0


def test_instructgpt_normaliser_for_k_between_4_and_9() -> None:
    """InstructGPT trains the C(K,2) comparisons of one prompt as one element: K = 4..9 gives 6..36 pairs; with
    all gaps equal to d the normalised loss is exactly -log sigma(d) whatever K (the K/2 normaliser is not)."""
    d = 0.7
    for k in range(4, 10):
        rewards = np.array([[d * (k - i) for i in range(k)]])  # gaps d * (j - i)
        n_pairs = math.comb(k, 2)
        expected = sum(math.log1p(math.exp(-d * (j - i))) for i in range(k) for j in range(i + 1, k)) / n_pairs
        assert ref.ranking_loss(rewards) == pytest.approx(expected, rel=1e-13)
