"""The oracle has teeth: every planted bug is rejected, with the right diagnosis; correct code written under
another documented convention is diagnosed by name and accepted under that convention."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from rlhf_oracle.properties import run_check

from .mutants import MUTANTS, THIRD_PARTY, Mutant, Variant3P

RESULTS: dict[str, tuple[bool, str]] = {}


def _diagnosis(report: Any) -> str:
    return "\n".join(report.failure.diagnosis) if report.failure else ""


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_mutant_is_rejected_with_the_right_diagnosis(mutant: Mutant) -> None:
    report = run_check(mutant.formula, mutant.fn, **mutant.options)
    diagnosis = _diagnosis(report)
    RESULTS[mutant.name] = (not report.passed, diagnosis.splitlines()[0] if diagnosis else "")
    assert not report.passed, f"{mutant.name} ({mutant.bug}) was not rejected"
    message = report.message()
    for part in (mutant.formula, "diagnosis:", "counter-example", f"R.{mutant.formula}("):
        assert part in message
    if mutant.diagnosis is not None:
        assert mutant.diagnosis in diagnosis, f"{mutant.name}: diagnosis does not name {mutant.diagnosis!r}:\n{message}"
    # the reproduction snippet is copy-pasteable: it runs and calls the reference on the shrunk inputs
    namespace: dict[str, Any] = {}
    exec(textwrap.dedent(message.split("the candidate saw them):\n", 1)[1]), namespace)
    assert "expected" in namespace


@pytest.mark.parametrize("variant", THIRD_PARTY, ids=[v.name for v in THIRD_PARTY])
def test_third_party_convention_is_named_then_accepted(variant: Variant3P) -> None:
    report = run_check(variant.formula, variant.fn, **variant.default_options)
    assert not report.passed
    assert variant.diagnosis in _diagnosis(report), report.message()
    accepted = run_check(variant.formula, variant.fn, **variant.accept_with)
    assert accepted.passed, accepted.message()


def test_kill_rate(capsys: pytest.CaptureFixture[str]) -> None:
    if len(RESULTS) < len(MUTANTS):  # run alone: compute the missing ones
        for m in MUTANTS:
            if m.name not in RESULTS:
                r = run_check(m.formula, m.fn, **m.options)
                RESULTS[m.name] = (not r.passed, _diagnosis(r).splitlines()[0] if r.failure else "")
    killed = sum(k for k, _ in RESULTS.values())
    with capsys.disabled():
        print(f"\nrlhf_oracle mutant kill rate: {killed}/{len(RESULTS)} = {killed / len(RESULTS):.0%}")
        for name, (k, d) in RESULTS.items():
            print(f"  {'KILLED ' if k else 'SURVIVED'} {name:40s} {d[:110]}")
    assert killed == len(RESULTS)
