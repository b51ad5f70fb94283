"""The KL penalty as a loss term and the new estimator options: hand values (abs, output clamp, the ratio
correction, every aggregation), the straight-through and ratio-corrected gradients of the twin against hand
derivatives, the clamp's exact value and zero gradient beyond exp's range, errors naming the argument."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhf_oracle import derivations as D
from rlhf_oracle import reference as R
from rlhf_oracle import torch_impl as T

LOGP = np.array([[-1.0, -2.0, -0.5]])
REF = np.array([[-1.5, -1.0, -0.5]])
OLD = np.array([[-1.0, -2.5, -0.7]])
MASK = np.array([[True, True, False]])
# Delta = logp - logp_ref on the two valid tokens
D0, D1 = 0.5, -1.0


def _k3(d: float) -> float:
    return math.exp(-d) - 1.0 + d


def _t(x: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def test_abs_and_output_clamp_of_kl_estimate() -> None:
    got = R.kl_estimate([-1.0, 2.0, 0.0], [0.5, 0.0, 0.0], "abs")
    assert got.tolist() == [1.5, 2.0, 0.0]
    # k3 at Delta = -3: e^3 - 4 = 16.09 -> 10 with the output clamp; k1 at -12 -> -10 (OpenRLHF clamps every kind)
    assert R.kl_estimate([-3.0], [0.0], "k3", output_clamp=10.0).tolist() == [10.0]
    assert R.kl_estimate([-12.0], [0.0], "k1", output_clamp=10.0).tolist() == [-10.0]
    assert R.kl_estimate([-1.0], [0.0], "k3", output_clamp=10.0)[0] == pytest.approx(math.e - 2.0, rel=1e-15)


def test_overflowing_k3_is_the_clamp_and_its_gradient_is_zero() -> None:
    assert R.kl_estimate([-1e4], [0.0], "k3", output_clamp=10.0).tolist() == [10.0]
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        x = torch.tensor([-1e4, -50.0, 0.5], dtype=dtype, requires_grad=True)
        out = T.kl_estimate(x, torch.zeros(3, dtype=dtype), "k3", output_clamp=10.0)
        assert out.dtype == dtype
        assert out[:2].tolist() == [10.0, 10.0]
        out.sum().backward()
        assert x.grad is not None
        assert x.grad[:2].tolist() == [0.0, 0.0]  # not NaN: no inf * 0 in backward
        assert float(x.grad[2]) == pytest.approx(1.0 - math.exp(-0.5), rel=1e-2 if dtype == torch.bfloat16 else 1e-6)
    with pytest.raises(ValueError, match="pass log_ratio_clamp or output_clamp"):
        R.kl_estimate([-1e4], [0.0], "k3")


def test_hand_values_of_the_kl_loss() -> None:
    assert R.kl_loss(LOGP, REF, MASK) == pytest.approx((_k3(D0) + _k3(D1)) / 2, rel=1e-15)
    assert R.kl_loss(LOGP, REF, MASK, "k1") == pytest.approx((D0 + D1) / 2, rel=1e-15)
    assert R.kl_loss(LOGP, REF, MASK, "abs", "seq-mean-token-sum") == pytest.approx(1.5, rel=1e-15)
    assert R.kl_loss(LOGP, REF, MASK, "k2", "seq-mean-token-sum-norm") == pytest.approx((0.125 + 0.5) / 3, rel=1e-15)
    # the straight-through gradient leaves the value of k3
    assert R.kl_loss(LOGP, REF, MASK, grad="k2") == R.kl_loss(LOGP, REF, MASK)
    # the ratio correction: logp - logp_old = (0, 0.5) on the valid tokens
    corrected = (_k3(D0) * 1.0 + _k3(D1) * math.exp(0.5)) / 2
    assert R.kl_loss(LOGP, REF, MASK, logp_old=OLD) == pytest.approx(corrected, rel=1e-15)
    # clamps: Delta clipped to +-0.75 first, then k3 clipped at 0.3
    clamped = (_k3(D0) + min(_k3(-0.75), 0.3)) / 2
    assert R.kl_loss(LOGP, REF, MASK, log_ratio_clamp=0.75, output_clamp=0.3) == pytest.approx(clamped, rel=1e-15)


def test_nan_padding_is_ignored_by_both_implementations() -> None:
    logp = np.where(MASK, LOGP, np.nan)
    old = np.where(MASK, OLD, np.inf)
    expected = R.kl_loss(LOGP, REF, MASK, logp_old=OLD)
    assert R.kl_loss(logp, REF, MASK, logp_old=old) == expected
    assert float(T.kl_loss(_t(logp), _t(REF), torch.tensor(MASK), logp_old=_t(old))) == pytest.approx(expected, 1e-15)


@pytest.mark.parametrize(
    ("grad", "with_old", "expected"),
    [
        # d/dlogp of token-mean over 2 tokens: slope / 2
        ("estimator", False, [(1 - math.exp(-D0)) / 2, (1 - math.exp(-D1)) / 2]),
        ("k2", False, [D0 / 2, D1 / 2]),
        # ratio not detached: (slope + k) * rho / 2, rho = (1, e^0.5)
        ("estimator", True, [(1 - math.exp(-D0) + _k3(D0)) / 2, (1 - math.exp(-D1) + _k3(D1)) * math.exp(0.5) / 2]),
        ("k2", True, [(D0 + _k3(D0)) / 2, (D1 + _k3(D1)) * math.exp(0.5) / 2]),
    ],
)
def test_twin_gradient_against_hand_derivatives(grad: str, with_old: bool, expected: list[float]) -> None:
    logp = _t(LOGP, grad=True)
    old = _t(OLD) if with_old else None
    T.kl_loss(logp, _t(REF), torch.tensor(MASK), grad=grad, logp_old=old).backward()
    assert logp.grad is not None
    assert logp.grad[0, :2].tolist() == pytest.approx(expected, rel=1e-12)
    assert float(logp.grad[0, 2]) == 0.0


def test_the_sympy_statement_holds() -> None:
    assert D.get("kl_loss_ratio_corrected").holds


@pytest.mark.parametrize("impl", [R, T])
def test_errors_name_the_argument(impl: object) -> None:
    def call(**kw: object) -> None:
        args = {"logp": LOGP, "logp_ref": REF, "mask": MASK}
        if impl is T:
            args = {k: torch.tensor(v) for k, v in args.items()}
        impl.kl_loss(**{**args, **kw})  # type: ignore[attr-defined]

    with pytest.raises(ValueError, match=r"kl_loss: 'grad' must be one of \('estimator', 'k2'\), got 'k3'"):
        call(grad="k3")
    with pytest.raises(ValueError, match=r"kl_loss: 'output_clamp' must be > 0"):
        call(output_clamp=0.0)
    with pytest.raises(ValueError, match=r"kl_loss: 'logp_old' has shape \(2, 3\), expected \(1, 3\)"):
        call(logp_old=np.zeros((2, 3)) if impl is R else torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"kl_loss: 'kind' must be one of"):
        call(kind="low_var_kl")
