"""The oracle's layout: a formula's knowledge lives in its family module, the package has no import cycle, and
no module of the oracle grows past a readable size."""

from __future__ import annotations

import ast
from pathlib import Path

from rlhf_oracle.properties import REGISTRY

PACKAGE = Path(__file__).resolve().parents[2] / "rlhf_oracle"
PROPERTIES = PACKAGE / "properties"
FAMILIES = PROPERTIES / "formulas"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _imports(path: Path) -> set[str]:
    """The rlhf_oracle modules ``path`` imports, at module level or inside functions (explicit imports only:
    importing ``a.b`` runs ``a/__init__`` too, but that is not an edge of ``a.b``'s own)."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("rlhf_oracle")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("rlhf_oracle"):
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if _is_module(sub) else module)
    return {m for m in found if _is_module(m) and m != here}


def test_no_import_cycle_in_the_package() -> None:
    graph = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_formula_id_outside_the_family_modules() -> None:
    """No table keyed by formula id, no formula-name branch in the generic oracle: every string constant equal
    to a formula id is in a family module (docstrings mention formulas in prose, never as a bare id)."""
    ids = set(REGISTRY)
    offenders = []
    for path in PROPERTIES.rglob("*.py"):
        if FAMILIES in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in ids:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert not offenders, "formula ids outside properties/formulas/: " + ", ".join(offenders)


def test_every_formula_is_registered_by_its_family_module() -> None:
    for formula, spec in REGISTRY.items():
        module = spec.strategy.__module__
        assert module.startswith("rlhf_oracle.properties.formulas."), f"{formula}: strategy from {module}"
        family = module.rsplit(".", 1)[1]
        assert spec.reference.__module__ == f"rlhf_oracle.reference.{family}", (
            f"{formula}: the family module {family!r} is named after the reference module that defines it"
        )


def test_no_oracle_module_over_500_lines() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in PROPERTIES.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}  # fmt: skip
    assert not long, f"modules over 500 lines: {long}"
