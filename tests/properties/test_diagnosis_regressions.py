"""Diagnoses that must not depend on which counter-example the search happens to shrink to.

A clean-clone CI run shrank the GAE-bootstrap mutant to a case whose padding holds NaN: the output is NaN, which
looks like a multiply-by-mask leak, and with zero padding the bug hides (V past the end is then 0, as the
reference says). The diagnosis must re-test with finite padding and name the convention actually followed.
"""

from __future__ import annotations

import numpy as np
import torch

from rlhf_oracle.properties import engine as E
from rlhf_oracle.properties.adapters import accepted_kwargs
from rlhf_oracle.properties.diagnosis import diagnose
from rlhf_oracle.properties.registry import get
from rlhf_oracle.properties.report import Failure
from rlhf_oracle.properties.strategies import Case

from .mutants import MUTANTS


def test_gae_bootstrap_is_named_even_when_the_padding_holds_nan() -> None:
    mutant = next(m for m in MUTANTS if m.name == "GAE bootstraps past the end")
    mask = np.array([[True, False]])
    nan_row = np.array([[0.0, np.nan]])
    case = Case(
        "gae",
        (nan_row, nan_row.copy(), mask),
        ("rewards", "values", "mask"),
        {"gamma": 1.0, "lam": 0.95},
        mask=mask,
        per_token=("rewards", "values"),
        fill="nan",
    )
    spec = get("gae")
    ctx = E.Context(spec, mutant.fn, accepted_kwargs(mutant.fn), {}, torch.float64, "cpu")
    rounded = E.rounded(case, torch.float64)
    actual = E.outputs(E.candidate_call(mutant.fn, case, torch.float64, "cpu", ctx.accepted))
    expected = E.reference_outputs(spec, rounded)
    failure = Failure("masked_slots", "nonfinite", case, rounded, "NaN output", expected, actual)
    notes = diagnose(ctx, failure)
    assert any("reads masked slots" in n for n in notes), notes
    assert any("bootstrap past the end" in n for n in notes), notes
