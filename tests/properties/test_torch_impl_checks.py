"""Every torch_impl function passes its check against the reference in float64, float32 and bf16."""

from __future__ import annotations

import pytest
import torch

import rlhf_oracle.torch_impl as T
from rlhf_oracle.properties import REGISTRY, check, check_error_parity, profiles
from rlhf_oracle.properties.report import PROPERTIES

DTYPES = [torch.float64, torch.float32, torch.bfloat16]
NOT_DTYPE = [p for p in PROPERTIES if p != "dtype"]  # the dtypes are parameters of these tests


def _params(device: str) -> list:  # type: ignore[type-arg]
    out = []
    for formula, spec in REGISTRY.items():
        for dtype in DTYPES:
            if dtype == torch.bfloat16 and not spec.bf16:
                continue
            out.append(pytest.param(formula, dtype, id=f"{formula}-{str(dtype).replace('torch.', '')}"))
    return out


@pytest.mark.parametrize(("formula", "dtype"), _params("cpu"))
def test_torch_impl_matches_reference(formula: str, dtype: torch.dtype) -> None:
    spec = REGISTRY[formula]
    report = check(formula, getattr(T, spec.torch_name), dtype=dtype, properties=NOT_DTYPE)
    assert all(p.passed is not False for p in report.properties)


@pytest.mark.gpu
@pytest.mark.parametrize(("formula", "dtype"), _params("cuda"))
def test_torch_impl_matches_reference_on_cuda(formula: str, dtype: torch.dtype) -> None:
    spec = REGISTRY[formula]
    check(formula, getattr(T, spec.torch_name), dtype=dtype, device="cuda", properties=NOT_DTYPE)


@pytest.mark.parametrize("formula", list(REGISTRY))
def test_torch_impl_refuses_bad_input_like_the_reference(formula: str) -> None:
    report = check_error_parity(formula, getattr(T, REGISTRY[formula].torch_name))
    assert report.passed, report.message()


CONVENTIONS = [
    ("policy_loss", {"agg": "token-mean"}),
    ("policy_loss", {"agg": "seq-mean-token-sum-norm", "max_tokens": 16}),
    ("policy_loss", {"clip_eps_high": 0.28, "dual_clip": 3.0}),
    ("kl_estimate", {"kind": "k3", "log_ratio_clamp": 20.0}),
    ("kl_estimate", {"kind": "k2"}),
    ("kl_shaped_rewards", {"kind": "k3", "score_position": "after_last"}),
    ("whiten", {"unbiased": False, "shift_mean": False}),
    ("value_loss", {"clip_eps": 0.5, "agg": "seq-mean-token-mean"}),
    ("value_loss", {"clip_eps": None}),
    ("grpo_advantages", {"std_normalize": False}),
    ("ptx_loss", {"agg": "seq-mean-token-sum"}),
    ("gae", {"gamma": 0.99, "lam": 1.0}),
]


@pytest.mark.parametrize(("formula", "conventions"), CONVENTIONS, ids=[f"{f}-{c}" for f, c in CONVENTIONS])
def test_torch_impl_matches_reference_under_fixed_conventions(formula: str, conventions: dict) -> None:  # type: ignore[type-arg]
    check(formula, getattr(T, formula), **conventions)


@pytest.mark.slow
@pytest.mark.parametrize(("formula", "dtype"), _params("cpu"))
def test_torch_impl_matches_reference_thorough(formula: str, dtype: torch.dtype) -> None:
    profiles.set_active("thorough-derandomized")  # CI must be reproducible; run `thorough` to explore
    try:
        check(formula, getattr(T, REGISTRY[formula].torch_name), dtype=dtype, properties=NOT_DTYPE)
    finally:
        profiles.set_active(None)
