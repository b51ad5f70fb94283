"""What a check returns: one :class:`PropertyResult` per named property, the :class:`CheckReport`, and its text.

The report lists the properties in a fixed order, maths first (``values``, ``gradients``), then ``edge_cases``,
``masked_slots``, ``masked_outputs``, ``stability`` and ``dtype``. Each property has its own verdict and, when it
fails, its own shrunk counter-example and diagnosis, so a padding leak never hides a mathematical difference.
A property waived by name is still run and shown as ``waived``, never as passed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .strategies import Case

__all__ = [
    "MATHS",
    "PROPERTIES",
    "WAIVABLE",
    "CheckReport",
    "Failure",
    "OracleMismatch",
    "PropertyResult",
    "array_text",
]

PROPERTIES = ("values", "gradients", "edge_cases", "masked_slots", "masked_outputs", "stability", "dtype")
"""Every named property, in report order."""

MATHS = ("values", "gradients")
"""The maths properties: finite, non-degenerate inputs; never waivable."""

WAIVABLE = PROPERTIES[2:]
"""The properties a user may waive by name (``waive=("masked_slots",)``, CLI ``--waive``)."""

PROPERTY_HELP = {
    "values": "the result on finite, non-degenerate inputs (every row has a valid token; finite padding)",
    "gradients": "autograd gradients of the differentiable inputs on the same inputs",
    "edge_cases": "empty rows, one valid token, all masked, B = 1: what the candidate does vs the reference",
    "masked_slots": "NaN / inf / 1e30 in masked input positions must not change the result",
    "masked_outputs": "what the candidate writes at masked positions of [B, T] outputs (contract: 0)",
    "stability": "log-ratios to +-50, logit spreads 1e3-1e4, reward gaps 1e4, estimator values beyond +-10",
    "dtype": "float32 / bf16 inputs, within the written rounding budget of that dtype",
}


@dataclass
class Failure:
    """A shrunk counter-example and what was wrong with it."""

    prop: str
    kind: str
    """``value``, ``nonfinite``, ``raised``, ``shape``, ``structure``, ``none``, ``no_grad``, ``grad``,
    ``masked_output``, ``accepted`` (an edge input the reference refuses), ``refused``."""
    case: Case
    rounded: Case
    message: str
    expected: Any = None
    actual: Any = None
    index: tuple[int, ...] | None = None
    output: int = 0
    ratio: float = math.inf
    diagnosis: list[str] = field(default_factory=list)
    dtype: torch.dtype | None = None
    """The dtype the candidate ran in (the ``dtype`` property runs several)."""


@dataclass
class PropertyResult:
    """One named property of a check."""

    name: str
    passed: bool | None
    """None when not run (not applicable, disabled, or skipped after a values failure)."""
    examples: int = 0
    worst: float = 0.0
    """Largest error / allowed error seen (<= 1 passes)."""
    note: str = ""
    waived: bool = False
    failure: Failure | None = None
    finding: Failure | None = None
    """A passed property's first finding: the candidate returns a value where the reference refuses the input
    (its choice, not a wrong number). Shown as ``differs``; ``strict=True`` turns it into a failure."""

    @property
    def status(self) -> str:
        if self.passed is None:
            return "n/a" if self.note.startswith("n/a") else "skipped"
        if self.waived:
            return "waived"
        if self.passed and self.finding is not None:
            return "differs"
        return "passed" if self.passed else "FAILED"


@dataclass
class CheckReport:
    """The outcome of a check: every property's verdict, and the failures with their diagnoses."""

    formula: str
    conventions: dict[str, Any]
    dtype: torch.dtype
    device: str
    candidate: str
    properties: list[PropertyResult] = field(default_factory=list)
    waived: tuple[str, ...] = ()
    candidate_import: str = ""
    """``module:qualname`` of the function checked, when importable (the reproduction snippet imports it)."""
    accepted: frozenset[str] | None = None
    """Keyword arguments the candidate takes (None: any); the snippet passes only those, as the check did."""
    adapted: bool = False
    """An adapter wrapped the candidate."""
    adapter_expr: str = ""
    """The Python expression of that adapter (``adapters.take(0)``), when the library can name it: the snippet
    rebuilds it; otherwise it calls the function itself and says so."""

    @property
    def failures(self) -> list[Failure]:
        """Failures of the properties that are not waived, in report order."""
        return [p.failure for p in self.properties if p.failure is not None and not p.waived]

    @property
    def failure(self) -> Failure | None:
        """The first failure that counts (maths first), or None."""
        fails = self.failures
        return fails[0] if fails else None

    @property
    def passed(self) -> bool:
        return not self.failures

    def property(self, name: str) -> PropertyResult:
        for p in self.properties:
            if p.name == name:
                return p
        raise KeyError(f"no property {name!r} in this report; it has {[p.name for p in self.properties]}")

    def verdicts(self) -> dict[str, str]:
        """Property name -> ``passed`` / ``FAILED`` / ``waived`` / ``n/a`` / ``skipped``."""
        return {p.name: p.status for p in self.properties}

    def message(self) -> str:
        lines = [_summary(self)]
        for p in self.properties:
            if p.failure is not None:
                lines.append("")
                lines.append(_format_failure(self, p.failure, waived=p.waived))
            elif p.finding is not None:
                lines.append("")
                lines.append(_format_failure(self, p.finding, finding=True))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data: the verdict of each property, and for each failure or finding its
        problem, diagnosis and runnable snippet (``rlhf-oracle check --format json``)."""

        def failure(f: Failure | None) -> dict[str, Any] | None:
            if f is None:
                return None
            refuses = f.kind == "accepted" or f.expected is None
            return {
                "problem": f.message,
                "diagnosis": list(f.diagnosis),
                "dtype": str(f.dtype or self.dtype),
                "snippet": _snippet(self.formula, f.rounded, refuses, self),
            }

        def plain(v: Any) -> Any:
            return v if isinstance(v, str | int | float | bool | None) else repr(v)

        properties = [
            {
                "name": p.name,
                "status": p.status,
                "examples": p.examples,
                "worst": p.worst if p.passed is not None else None,
                "note": p.note,
                "failure": failure(p.failure),
                "finding": failure(p.finding),
            }
            for p in self.properties
        ]
        return {
            "formula": self.formula,
            "candidate": self.candidate,
            "passed": self.passed,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": self.device,
            "conventions": {k: plain(v) for k, v in self.conventions.items()},
            "properties": properties,
        }

    def raise_for_failure(self) -> CheckReport:
        __tracebackhide__ = True
        if not self.passed:
            raise OracleMismatch(self)
        return self


class OracleMismatch(AssertionError):
    """A candidate disagrees with the reference; ``.report`` holds the details."""

    def __init__(self, report: CheckReport) -> None:
        super().__init__(report.message())
        self.report = report


# ----------------------------------------------------------------------------------------------------------------
# formatting


def array_text(x: Any) -> str:
    """A NumPy literal that evaluates back to ``x`` (NaN/inf written as ``np.nan``/``np.inf``)."""
    if isinstance(x, np.ndarray):
        body = np.array2string(x, separator=", ", floatmode="unique", threshold=10**6, max_line_width=110)
        body = body.replace("nan", "np.nan").replace("inf", "np.inf")
        if x.dtype == np.bool_:
            return f"np.array({body})"
        if np.issubdtype(x.dtype, np.integer):
            return f"np.array({body}, dtype=np.int64)"
        return f"np.array({body}, dtype=np.float64)"
    return repr(x)


def _snippet(formula: str, case: Case, refuses: bool = False, report: CheckReport | None = None) -> str:
    """A runnable reproduction: the inputs as NumPy literals, the reference's result and, when the report knows the
    candidate, the candidate called on the same inputs as the torch tensors it received; prints both."""
    lines = ["import numpy as np", "import torch", "from rlhf_oracle import reference as R"]
    if report is not None and report.candidate_import:
        module, _, qualname = report.candidate_import.rpartition(":")
        head, _, rest = qualname.removesuffix("()").partition(".")
        if module.endswith(".py"):  # a file the CLI loaded: load it the same way
            lines += [
                "import importlib.util, sys",
                f"sys.path.insert(0, {str(Path(module).parent)!r})",
                f"_spec = importlib.util.spec_from_file_location('target', {module!r})",
                "target = importlib.util.module_from_spec(_spec)",
                "_spec.loader.exec_module(target)",
            ]
            candidate = f"target.{qualname}"
        else:
            lines.append(f"from {module} import {head}" + (f"  # candidate = {qualname}" if rest else ""))
            candidate = qualname
        if report.adapter_expr:
            lines += ["from rlhf_oracle.properties import adapters", f"candidate = {report.adapter_expr}({candidate})"]
            candidate = "candidate"
    else:
        lines.append("# candidate = ...  (the function under test: it was not importable by name)")
        candidate = "candidate"
    lines.append("")
    for name, value in case.named().items():
        lines.append(f"{name} = {array_text(value)}")
    call_args = ", ".join(case.arg_names)
    kw = ", ".join(f"{k}={k}" for k in case.kwargs)
    call = f"R.{formula}({call_args}{', ' + kw if kw else ''})"
    if refuses:
        lines += ["try:", f"    expected = {call}", "except ValueError as exc:  # the reference refuses this input",
                  "    expected = exc"]  # fmt: skip
    else:
        lines.append(f"expected = {call}")
    if report is not None:
        dtype = str(report.dtype).replace("torch.", "")
        lines += [
            "",
            f"def t(a):  # the tensors the candidate received: floats as {dtype}, masks as bool, indices as int64",
            "    if not isinstance(a, np.ndarray):",
            "        return a",
            f"    return torch.tensor(a, dtype=torch.{dtype}) if a.dtype.kind == 'f' else torch.tensor(a)",
            "",
        ]
        accepted = report.accepted
        cand_kw = ", ".join(f"{k}=t({k})" for k in case.kwargs if accepted is None or k in accepted)
        args = ", ".join(f"t({n})" for n in case.arg_names)
        note = "  # without the adapter of the check (yours)" if report.adapted and not report.adapter_expr else ""
        calls = [
            f"actual = {candidate}({args}{', ' + cand_kw if cand_kw else ''}){note}",
            'print("expected:", expected)',
            'print("actual:  ", actual)',
        ]
        # a candidate that is not importable by name (a lambda, a local): the call is shown, commented, so that
        # the snippet still runs as it is
        lines += calls if report.candidate_import else ["# " + ln for ln in calls]
    return "\n".join(lines)


def _summary(report: CheckReport) -> str:
    verdicts = ", ".join(f"{p.name}: {p.status}" for p in report.properties)
    head = "all properties pass" if report.passed else f"{len(report.failures)} propert(y/ies) failed"
    return f"{report.formula}: {head} [{verdicts}]"


def _format_failure(report: CheckReport, f: Failure, *, waived: bool = False, finding: bool = False) -> str:
    from .registry import get

    spec = get(report.formula)
    conv = ", ".join(f"{k}={v!r}" for k, v in report.conventions.items()) or "reference defaults"
    dtype = f.dtype or report.dtype
    status = "waived by the caller, shown for information" if waived else "failed"
    if finding:
        status = "differs from the reference's refusal: reported, not failed (strict=True fails it)"
    lines = [
        f"[{f.prop}] rlhf_oracle: {report.candidate} does not match reference.{spec.id} "
        f"[property: {f.prop} ({status}); dtype: {str(dtype).replace('torch.', '')}; device: {report.device}]",
        f"  formula:    {spec.id} ({spec.paper}, {spec.equation}; docs: {spec.docs_page})",
        f"  convention: {conv}; drawn hyper-parameters: "
        + (", ".join(f"{k}={v!r}" for k, v in f.case.kwargs.items() if not isinstance(v, np.ndarray)) or "none"),
        f"  problem:    {f.message}",
    ]
    if f.expected is not None and f.actual is not None and f.kind in ("value", "nonfinite", "grad", "masked_output"):
        exp = f.expected[f.output] if isinstance(f.expected, list) else f.expected
        act = f.actual[f.output] if isinstance(f.actual, list) else f.actual
        if isinstance(exp, np.ndarray) and exp.size <= 64:
            lines.append(f"  expected:   {array_text(exp)}")
            lines.append(f"  actual:     {array_text(np.asarray(act))}")
        if f.index is not None or math.isfinite(f.ratio):
            lines.append(f"  worst index: {f.index} (error = {f.ratio:.3g} x the allowed error)")
    lines.append("  diagnosis:")
    lines += [f"    - {d}" for d in f.diagnosis]
    what = f"masked slots hold {f.case.fill!r}"
    if f.case.edge:
        what += f"; edge case: {f.case.edge}"
    lines.append(f"  counter-example (shrunk; {what}; inputs as the candidate saw them):")
    refuses = f.kind == "accepted" or f.expected is None  # the reference raises on this input
    lines += ["    " + ln for ln in _snippet(spec.id, f.rounded, refuses=refuses, report=report).splitlines()]
    return "\n".join(lines)
