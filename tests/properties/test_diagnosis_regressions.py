"""Diagnoses that must not depend on which counter-example the search happens to shrink to.

A clean-clone CI run shrank the GAE-bootstrap mutant to a case whose padding holds NaN: the output is NaN, which
looks like a multiply-by-mask leak, and with zero padding the bug hides (V past the end is then 0, as the
reference says). The diagnosis must re-test with finite padding and name the convention actually followed.
"""

from __future__ import annotations

import numpy as np
import torch

from rlhf_oracle.properties import checks as C
from rlhf_oracle.properties.registry import get
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
    ctx = C._Context(spec, mutant.fn, C.accepted_kwargs(mutant.fn), {}, torch.float64, "cpu", False)
    rounded = C.rounded(case, torch.float64)
    actual = C._outputs(C._candidate_call(mutant.fn, case, torch.float64, "cpu", ctx.accepted))
    failure = C.Failure("values", "nonfinite", case, rounded, "NaN output", C._reference(spec, rounded), actual)
    notes = C._diagnose(ctx, failure)
    assert any("reads masked slots" in n for n in notes), notes
    assert any("bootstrap past the end" in n for n in notes), notes
