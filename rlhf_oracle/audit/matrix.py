"""Run the audit and render the conformance matrix (framework x function x property) as Markdown and JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .fetch import fetch
from .frameworks import FRAMEWORKS, PINS, AuditEntry, entries, load_source

__all__ = ["AuditRow", "render_json", "render_markdown", "rows_from_json", "run_audit"]


@dataclass
class AuditRow:
    """One framework function: every property's verdict and, where it differs, the named convention."""

    framework: str
    source: str
    version: str
    function: str
    formula: str
    conventions: dict[str, Any]
    verdicts: dict[str, str] = field(default_factory=dict)
    """property -> ``pass`` / ``differs`` / ``waived`` / ``n/a``."""
    differences: dict[str, str] = field(default_factory=dict)
    """property -> the diagnosis (first line), for the properties that differ."""
    error: str = ""

    @property
    def agrees(self) -> bool:
        return not self.error and all(v != "differs" for v in self.verdicts.values())


def _phrase(line: str) -> str:
    """The named convention of one diagnosis line, in a few words ("" for context lines)."""
    if line.startswith("regime: "):
        return ""
    for prefix in ("where it runs, it differs too: ", ""):
        if line.startswith(prefix + "matches ") and not line.startswith(prefix + "matches no documented"):
            name = line[len(prefix) + len("matches ") :].split(", not ", 1)[0]
            return ("elsewhere " if prefix else "") + name
    if "where the reference raises" in line:
        return line.split(":", 1)[0] + ": returns a value where the reference raises ValueError"
    for key in (
        "float32-only computation",
        "NaN/inf leak from masked slots",
        "the recursion's carry is written out",
        "NaN/inf from a division by an empty count (0/0)",
    ):
        if key in line:
            return key  # fmt: skip
    return line.split(" (", 1)[0].split("; ", 1)[0][:140]


def _headline(diagnosis: list[str], message: str) -> str:
    phrases = [p for p in (_phrase(d) for d in diagnosis) if p] or [message[:160]]
    useful = [p for p in phrases if not p.startswith("matches no documented")] or phrases
    edge = ("all masked", "empty row", "one valid token", "B = 1")
    if len(useful) > 1 and useful[0] in edge:
        return f"{useful[0]}: " + " + ".join(dict.fromkeys(useful[1:]))
    return " + ".join(dict.fromkeys(useful))


def _row(entry: AuditEntry, modules: dict[str, SimpleNamespace], version: str, max_examples: int | None) -> AuditRow:
    from rlhf_oracle.properties import run_check

    row = AuditRow(entry.framework, entry.source, version, entry.function, entry.formula, dict(entry.conventions))
    try:
        candidate = entry.build(modules)
        candidate.__qualname__ = entry.function
        report = run_check(entry.formula, candidate, waive=entry.waive, max_examples=max_examples,
                           **entry.conventions)  # fmt: skip
    except Exception as exc:  # a wrapper that cannot be built is reported, not raised
        row.error = f"{type(exc).__name__}: {exc}"
        return row
    for p in report.properties:
        if p.passed is None:
            row.verdicts[p.name] = "n/a"
        elif p.waived:
            row.verdicts[p.name] = "waived"
        else:  # a finding (a value where the reference refuses the input) is a difference the matrix shows
            row.verdicts[p.name] = "pass" if p.passed and p.finding is None else "differs"
        noted = p.failure if p.failure is not None else p.finding
        if noted is not None:
            row.differences[p.name] = _headline(noted.diagnosis, noted.message)
    return row


def run_audit(framework: str, *, max_examples: int | None = None) -> list[AuditRow]:
    """Fetch the pinned wheels of ``framework`` (or ``"all"``), load its functions and run every property.

    Raises :class:`~rlhf_oracle.audit.fetch.AuditUnavailable` when a wheel cannot be fetched."""
    names = list(FRAMEWORKS) if framework == "all" else [framework]
    rows: list[AuditRow] = []
    for name in names:
        todo = entries(name)
        loaded: dict[str, tuple[dict[str, SimpleNamespace], str]] = {}
        for source in dict.fromkeys(x.source for x in todo):
            dist, version = PINS[source]
            root: Path = fetch(dist, version)
            loaded[source] = (load_source(source, root), version)
        for entry in todo:
            modules, version = loaded[entry.source]
            rows.append(_row(entry, modules, version, max_examples))
    return rows


_ORDER = ("values", "gradients", "edge_cases", "masked_slots", "masked_outputs", "stability", "dtype")


def render_markdown(rows: list[AuditRow]) -> str:
    """The matrix as a Markdown table, then the named differences."""
    head = "| framework | function | formula | conventions | " + " | ".join(_ORDER) + " |"
    lines = [head, "|" + "---|" * (4 + len(_ORDER))]
    marks = {"pass": "pass", "differs": "**differs**", "waived": "waived", "n/a": "-"}
    for r in rows:
        conv = ", ".join(f"{k}={v!r}" for k, v in r.conventions.items()) or "-"
        cells = [marks.get(r.verdicts.get(p, ""), "error") if not r.error else "error" for p in _ORDER]
        lines.append(f"| {r.framework} {r.version} | `{r.function}` | {r.formula} | {conv} | " + " | ".join(cells)
                     + " |")  # fmt: skip
    lines.append("")
    lines.append("Named differences:")
    lines.append("")
    for r in rows:
        if r.error:
            lines.append(f"- `{r.function}`: could not run ({r.error})")
        for p in _ORDER:
            if p in r.differences and r.verdicts.get(p) in ("differs", "waived"):
                lines.append(f"- `{r.function}` [{p}]: {r.differences[p]}")
    agree = [r.function for r in rows if r.agrees]
    lines.append("")
    lines.append(f"Agree with the exact maths on every property: {', '.join(f'`{a}`' for a in agree) or 'none'}.")
    return "\n".join(lines)


def render_json(rows: list[AuditRow]) -> str:
    return json.dumps([{**asdict(r), "agrees": r.agrees} for r in rows], indent=2, default=repr)


def rows_from_json(text: str) -> list[AuditRow]:
    """The rows of a matrix written by :func:`render_json` (the docs render the committed snapshot)."""
    fields = set(AuditRow.__dataclass_fields__)
    return [AuditRow(**{k: v for k, v in item.items() if k in fields}) for item in json.loads(text)]
