"""The whole actor loss: the sum of its three terms by hand (each aggregated by its own mode), the gradient of
the twin against the sum of hand derivatives, the terms that are not read, errors naming the argument."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhf_oracle import reference as R
from rlhf_oracle import torch_impl as T

LOGP = np.log([[0.5, 0.25, 0.9], [0.2, 0.1, 0.4]])
OLD = LOGP.copy()  # on-policy: r = 1 everywhere
REF = LOGP + 0.5  # Delta = -0.5 on every token
ADV = np.array([[1.0, 1.0, 1.0], [-0.5, -0.5, -0.5]])
ENT = np.array([[1.0, 2.0, 0.0], [0.5, 0.5, 0.5]])
MASK = np.array([[True, True, False], [True, True, True]])
K3 = math.exp(0.5) - 1.0 - 0.5  # k3 at Delta = -0.5


def test_hand_value_with_three_aggregations() -> None:
    # PPO at r = 1: -agg(A); seq-mean-token-mean: rows 1 and -0.5 -> -(1 - 0.5)/2
    policy = -(1.0 - 0.5) / 2
    kl = K3  # token-mean of a constant
    bonus = (1.0 + 2.0 + 1.5) / 2  # seq-mean-token-sum of the entropy: rows 3 and 1.5
    got = R.actor_loss(LOGP, OLD, ADV, MASK, logp_ref=REF, kl_coef=0.1, kl_agg="token-mean", entropy=ENT,
                       entropy_coef=0.01, entropy_agg="seq-mean-token-sum")  # fmt: skip
    assert got == pytest.approx(policy + 0.1 * kl - 0.01 * bonus, rel=1e-14)


def test_terms_with_zero_coefficient_are_not_read() -> None:
    nan = np.full_like(LOGP, np.nan)
    plain = R.policy_loss(LOGP, OLD, ADV, MASK)
    assert R.actor_loss(LOGP, OLD, ADV, MASK, logp_ref=nan, entropy=nan) == plain
    # REINFORCE reads no old policy
    assert R.actor_loss(LOGP, None, ADV, MASK, loss="pg") == R.pg_loss(LOGP, ADV, MASK)


def test_twin_gradient_is_the_sum_of_the_hand_derivatives() -> None:
    logp = torch.tensor(LOGP, requires_grad=True)
    ent = torch.tensor(ENT, requires_grad=True)
    m = torch.tensor(MASK)
    total = T.actor_loss(logp, torch.tensor(OLD), torch.tensor(ADV), m, loss="pg", agg="token-mean",
                         logp_ref=torch.tensor(REF), kl_coef=0.1, entropy=ent, entropy_coef=0.01)  # fmt: skip
    total.backward()
    assert logp.grad is not None and ent.grad is not None
    # token-mean over 5 tokens: pg -A/5, k3 (1 - e^{-Delta})/5 = (1 - e^{0.5})/5, entropy -0.01/5
    expected = np.where(MASK, -ADV / 5 + 0.1 * (1.0 - math.exp(0.5)) / 5, 0.0)
    np.testing.assert_allclose(logp.grad.numpy(), expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ent.grad.numpy(), np.where(MASK, -0.01 / 5, 0.0), rtol=1e-12, atol=0)


@pytest.mark.parametrize("impl", [R, T])
def test_errors_name_the_argument(impl: object) -> None:
    def call(**kw: object) -> None:
        arrays = [LOGP, OLD, ADV, MASK]
        if impl is T:
            arrays = [torch.tensor(a) for a in arrays]
            kw = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
        impl.actor_loss(*arrays, **kw)  # type: ignore[attr-defined]

    with pytest.raises(ValueError, match=r"actor_loss: 'clip_eps' is not an option of loss='cispo'; its options: "):
        call(loss="cispo", clip_eps=0.2)
    with pytest.raises(ValueError, match=r"actor_loss: 'logp_ref' is required when kl_coef > 0, got None"):
        call(kl_coef=0.1)
    with pytest.raises(ValueError, match=r"actor_loss: 'entropy' is required when entropy_coef > 0, got None"):
        call(entropy_coef=0.1)
    with pytest.raises(ValueError, match=r"actor_loss: 'loss' must be one of \('ppo', 'pg', 'cispo', 'gspo', "):
        call(loss="grpo")
    with pytest.raises(ValueError, match=r"actor_loss: 'kl_options' may hold \('grad', "):
        call(logp_ref=REF, kl_coef=0.1, kl_options={"kind": "k1"})
    with pytest.raises(ValueError, match=r"cispo_loss: 'weight_max' must be > 0"):
        call(loss="cispo", weight_max=0.0)
