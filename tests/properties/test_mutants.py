"""The oracle has teeth: every planted bug is rejected, with the right diagnosis; correct code written under
another documented convention is diagnosed by name and accepted under that convention."""

from __future__ import annotations

import textwrap
import warnings
from typing import Any

import pytest

from rlhf_oracle.properties import run_check

from .mutants import MUTANTS, THIRD_PARTY, Mutant, Variant3P

RESULTS: dict[str, tuple[bool, str]] = {}


def _diagnosis(report: Any, prop: str | None = None) -> str:
    failure = report.property(prop).failure if prop else report.failure
    return "\n".join(failure.diagnosis) if failure else ""


def _properties(mutant: Mutant) -> tuple[str, ...]:
    """The maths properties and the one that must catch the mutant (the others are exercised elsewhere)."""
    return tuple(dict.fromkeys(("values", "gradients", mutant.prop)))


def _block(message: str, prop: str) -> str:
    """The formatted failure of one property (blocks start with ``[prop]``)."""
    return message.split(f"\n[{prop}] ", 1)[1].split("\n\n[", 1)[0]


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_mutant_is_rejected_with_the_right_diagnosis(mutant: Mutant) -> None:
    report = run_check(mutant.formula, mutant.fn, properties=_properties(mutant), **mutant.options)
    diagnosis = _diagnosis(report, mutant.prop)
    killed = report.property(mutant.prop).passed is False
    RESULTS[mutant.name] = (killed, f"[{mutant.prop}] " + (diagnosis.splitlines()[0] if diagnosis else ""))
    assert killed, f"{mutant.name} ({mutant.bug}) was not rejected by {mutant.prop}: {report.verdicts()}"
    block = _block(report.message(), mutant.prop)
    for part in (mutant.formula, "diagnosis:", "counter-example", f"R.{mutant.formula}("):
        assert part in block
    if mutant.diagnosis is not None:
        assert mutant.diagnosis in diagnosis, f"{mutant.name}: diagnosis does not name {mutant.diagnosis!r}:\n{block}"
    if mutant.prop not in ("values", "gradients"):  # the maths properties never blame a padding/stability bug
        maths = {p: report.property(p).status for p in ("values", "gradients")}
        assert "FAILED" not in maths.values(), (mutant.name, maths)
    # the reproduction snippet is copy-pasteable: it runs and calls the reference on the shrunk inputs
    namespace: dict[str, Any] = {}
    exec(textwrap.dedent(block.split("the candidate saw them):\n", 1)[1]), namespace)
    assert "expected" in namespace


@pytest.mark.parametrize("variant", THIRD_PARTY, ids=[v.name for v in THIRD_PARTY])
def test_third_party_convention_is_named_then_accepted(variant: Variant3P) -> None:
    report = run_check(variant.formula, variant.fn, properties=("values", "gradients"), **variant.default_options)
    assert report.property("values").passed is False
    assert variant.diagnosis in _diagnosis(report, "values"), report.message()
    # under its convention no maths property rejects it (padding/edge behaviour is reported separately)
    accepted = run_check(variant.formula, variant.fn, **variant.accept_with)
    maths = {p: accepted.property(p).status for p in ("values", "gradients")}
    assert "FAILED" not in maths.values(), accepted.message()


@pytest.mark.slow  # (under xdist each worker sees only its share of RESULTS: the sequential slow run reports it)
def test_kill_rate(capsys: pytest.CaptureFixture[str]) -> None:
    if len(RESULTS) < len(MUTANTS):  # run alone: compute the missing ones
        for m in MUTANTS:
            if m.name not in RESULTS:
                r = run_check(m.formula, m.fn, properties=_properties(m), **m.options)
                d = _diagnosis(r, m.prop)
                RESULTS[m.name] = (r.property(m.prop).passed is False, d.splitlines()[0] if d else "")
    killed = sum(k for k, _ in RESULTS.values())
    with capsys.disabled():
        print(f"\nrlhf_oracle mutant kill rate: {killed}/{len(RESULTS)} = {killed / len(RESULTS):.0%}")
        for name, (k, d) in RESULTS.items():
            print(f"  {'KILLED ' if k else 'SURVIVED'} {name:40s} {d[:110]}")
    assert killed == len(RESULTS)


@pytest.mark.slow
@pytest.mark.parametrize(
    "formula", ["kl_estimate", "gae", "whiten", "reinforce_pp_advantages", "grpo_advantages", "dpo_loss"]
)
def test_the_oracle_leaks_no_warning_into_the_users_output(formula: str) -> None:
    """A check of a wrong candidate (every property, the diagnosis's variants on degenerate inputs included)
    emits no warning of its own: the only warnings a user sees are their code's."""
    mutants = [m for m in MUTANTS if m.formula == formula]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for m in mutants:
            run_check(m.formula, m.fn, **m.options)
    ours = [w for w in caught if "rlhf_oracle" in w.filename or "numpy" in w.filename]
    assert not ours, [(w.filename, w.lineno, str(w.message)) for w in ours]
