"""Strategies build valid inputs (the reference accepts them) and matching bad ones (the reference refuses
them); adapters make other conventions fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import rlhf_oracle.reference as R
from rlhf_oracle.properties import REGISTRY, adapters, check, run_check
from rlhf_oracle.properties import strategies as S


@pytest.mark.parametrize("formula", list(REGISTRY))
@given(data=st.data())
def test_valid_cases_are_accepted_by_the_reference(formula: str, data: st.DataObject) -> None:
    case = data.draw(S.cases(formula))
    with np.errstate(all="ignore"):
        out = REGISTRY[formula].reference(*case.args, **case.kwargs)
    parts = out if isinstance(out, tuple) else (out,)
    assert all(np.all(np.isfinite(np.asarray(p))) for p in parts)


@pytest.mark.parametrize("formula", list(REGISTRY))
@given(data=st.data())
def test_bad_cases_are_refused_by_the_reference(formula: str, data: st.DataObject) -> None:
    bad = data.draw(S.bad_cases(formula))
    with pytest.raises((ValueError, TypeError)), np.errstate(all="ignore"):
        REGISTRY[formula].reference(*bad.case.args, **bad.case.kwargs)


@given(st.integers(1, 5), st.integers(1, 9), st.data())
def test_masks_have_the_requested_structure(b: int, t: int, data: st.DataObject) -> None:
    min_valid = data.draw(st.integers(0, 1))
    need_pad = data.draw(st.booleans()) and t >= 2
    m = data.draw(S.masks(b, t, min_valid=min_valid, need_pad_after=need_pad))
    assert m.shape == (b, t) and m.dtype == np.bool_
    assert np.all(m.sum(1) >= min_valid)
    if need_pad:
        assert not m[:, -1].any()


def test_masks_reach_left_right_padding_and_holes() -> None:
    seen = set()

    @given(S.masks(2, 6, min_valid=1))
    def collect(m: np.ndarray) -> None:
        for row in m:
            idx = np.flatnonzero(row)
            if idx[0] > 0:
                seen.add("left")
            if idx[-1] < 5:
                seen.add("right")
            if len(idx) < idx[-1] - idx[0] + 1:
                seen.add("hole")

    collect()
    assert seen == {"left", "right", "hole"}


def test_refilled_changes_only_masked_slots() -> None:
    @given(S.cases("policy_loss"), st.sampled_from(S.FILLS))
    def run(case: S.Case, fill: str) -> None:
        other = case.refilled(fill)
        assert case.mask is not None
        for name in case.per_token:
            a, b = case.named()[name], other.named()[name]
            assert np.array_equal(a[case.mask], b[case.mask])

    run()


def _numpy_gae(rewards: np.ndarray, values: np.ndarray, mask: np.ndarray, gamma: float = 1.0, lam: float = 0.95):  # type: ignore[no-untyped-def]
    return R.gae(rewards, values, mask, gamma, lam)


def test_numpy_candidate_through_numpy_io() -> None:
    report = check("gae", _numpy_gae, adapter=adapters.numpy_io, max_examples=10)
    assert report.passed
    report = check("policy_loss", R.policy_loss, adapter=adapters.numpy_io, max_examples=10)
    verdicts = report.verdicts()
    assert verdicts["values"] == "passed" and verdicts["edge_cases"] == "passed"
    assert verdicts["gradients"] == "skipped"  # NumPy is not differentiable


def test_tuple_output_needs_an_adapter() -> None:
    def with_stats(logp, logp_old, advantages, clip_eps=0.2):  # type: ignore[no-untyped-def]
        ratio = torch.exp(logp - logp_old)
        obj = torch.minimum(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages)
        return obj, {"clipfrac": 0.0}

    report = run_check("ppo_clip_objective", with_stats, max_examples=5)
    assert not report.passed and report.failure is not None
    assert "adapters.first" in report.message() or "output" in report.message()
    assert check("ppo_clip_objective", with_stats, adapter=adapters.take(0), max_examples=10).passed


def test_rename_reorder_negate_float_mask_compose() -> None:
    def objective(mask, adv, lp, lp_old, cliprange=0.2):  # type: ignore[no-untyped-def]
        m = mask.bool()
        assert mask.dtype != torch.bool  # float_mask converted it
        ratio = torch.exp(torch.where(m, lp - lp_old, 0.0))
        a = torch.where(m, adv, 0.0)
        obj = torch.minimum(ratio * a, ratio.clamp(1 - cliprange, 1 + cliprange) * a)
        return (torch.where(m, obj, 0.0).sum(-1) / m.sum(-1)).mean()

    adapter = [adapters.reorder([3, 2, 0, 1]), adapters.float_mask, adapters.negate,
               adapters.rename(clip_eps="cliprange")]  # fmt: skip
    # 0/0 = NaN on an all-masked batch (the reference raises): an edge case, waived by name
    assert check("policy_loss", objective, adapter=adapter, max_examples=10, waive=("edge_cases",)).passed
    assert adapters.accepted_kwargs(adapters.compose(*adapter)(objective)) == frozenset(
        {"mask", "adv", "lp", "lp_old", "clip_eps"}
    )


def test_parse_adapters() -> None:
    a = adapters.parse(["ratio", "first", "take:loss", "rename:clip_eps=cliprange", "reorder:1,0", "negate"])
    assert callable(a)
    with pytest.raises(ValueError, match="unknown adapter"):
        adapters.parse("bogus")


def test_unknown_convention_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="unknown convention"):
        check("gae", R.gae, adapter=adapters.numpy_io, agg="token-mean")
