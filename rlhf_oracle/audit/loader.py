"""Load named functions from a framework's source file without importing the framework.

The module is parsed, and only the requested top-level definitions plus the top-level helpers and constants
they reference (transitively) are compiled and executed, in a namespace that provides torch, NumPy and the
usual aliases. Imports of the framework's heavy dependencies (deepspeed, ray, vLLM, flash-attn) are never
executed. Decorators are dropped (registries, ``@deprecated``, ``@torch.compile``: the maths is the same);
``overrides`` replaces names the code imports from elsewhere (e.g. ``verl_F``, ``is_triton_available``).
"""

from __future__ import annotations
import __future__

import ast
import enum
import math
import typing
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

__all__ = ["base_namespace", "load", "load_method"]


def base_namespace() -> dict[str, Any]:
    ns: dict[str, Any] = {
        "torch": torch,
        "np": np,
        "numpy": np,
        "math": math,
        "F": torch.nn.functional,
        "nn": torch.nn,
        "dist": torch.distributed,
        "defaultdict": defaultdict,
        "Enum": enum.Enum,
    }
    ns.update({name: getattr(typing, name) for name in ("Any", "Callable", "Dict", "List", "Optional", "Tuple",
                                                        "Union")})  # fmt: skip
    return ns


def _defined(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _top_level(tree: ast.Module) -> dict[str, ast.stmt]:
    top: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            node.decorator_list = []  # (dropped before the dependency walk: registries pull in whole modules)
        for name in _defined(node):
            top[name] = node
    return top


def _run(path: Path, tree: ast.Module, top: dict[str, ast.stmt], roots: list[ast.stmt], names: list[str],
         overrides: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """Compile ``roots`` with the top-level definitions they reference (transitively), in source order."""
    overrides = overrides or {}
    wanted: set[int] = {id(r) for r in roots}
    stack = [sub.id for r in roots for sub in ast.walk(r) if isinstance(sub, ast.Name)]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or name not in top or name in overrides:
            continue
        seen.add(name)
        node = top[name]
        wanted.add(id(node))
        stack += [sub.id for sub in ast.walk(node) if isinstance(sub, ast.Name)]
    body = [node for node in tree.body if id(node) in wanted]
    body += [r for r in roots if r not in tree.body]
    module = ast.Module(body=body, type_ignores=[])
    code = compile(module, str(path), "exec", flags=__future__.annotations.compiler_flag, dont_inherit=True)
    namespace = {**base_namespace(), "__name__": f"rlhf_oracle_audit.{Path(path).stem}", **overrides}
    exec(code, namespace)
    return {n: namespace[n] for n in names}


def load(path: Path, names: list[str], overrides: dict[str, Any] | None = None) -> SimpleNamespace:
    """The functions/classes ``names`` of the source file ``path``, with what they need from the same file."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))
    top = _top_level(tree)
    missing = [n for n in names if n not in top]
    if missing:
        raise LookupError(f"{path}: no top-level definition of {missing}")
    return SimpleNamespace(**_run(path, tree, top, [top[n] for n in names], names, overrides))


def load_method(
    path: Path,
    cls: str,
    method: str,
    overrides: dict[str, Any] | None = None,
    *,
    block: tuple[str, tuple[str, ...], str] | None = None,
    span: tuple[str, str, tuple[str, ...], str] | None = None,
) -> Callable[..., Any]:
    """The method ``cls.method`` of the source file ``path`` as a plain function of ``(self, ...)``, with the
    top-level helpers it needs; the class itself (its base classes, its other methods) is not loaded.

    ``block = (condition, parameters, result)``: instead of the whole method, the body of the ``if`` in it
    whose condition reads ``condition`` (as ``ast.unparse`` prints it) and that assigns ``result`` (exactly one
    such block must exist), as a function of ``(self, *parameters)``
    returning the local ``result``: the statements a trainer runs inline, run verbatim.

    ``span = (first, last, parameters, result)``: the consecutive statements of the method's body from the one
    whose source starts with ``first`` to the one starting with ``last`` (both included), as such a function.
    """
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))
    top = _top_level(tree)
    klass = top.get(cls)
    if not isinstance(klass, ast.ClassDef):
        raise LookupError(f"{path}: no top-level class {cls}")
    found = [n for n in klass.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == method]
    if not found:
        raise LookupError(f"{path}: {cls} has no method {method}")
    fn = found[0]
    fn.decorator_list = []
    if span is not None:
        first, last, params, result = span
        texts = [ast.unparse(n) for n in fn.body]
        starts = [i for i, t in enumerate(texts) if t.startswith(first)]
        ends = [i for i, t in enumerate(texts) if t.startswith(last)]
        if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
            raise LookupError(f"{path}: {cls}.{method} has no single span from {first!r} to {last!r}")
        spanned = _as_function(method, params, result, fn.body[starts[0] : ends[0] + 1])
        return _run(path, tree, top, [spanned], [method], overrides)[method]  # type: ignore[no-any-return]
    if block is not None:
        condition, params, result = block
        ifs = [
            n for n in ast.walk(fn)
            if isinstance(n, ast.If) and ast.unparse(n.test) == condition
            and any(isinstance(t, ast.Name) and t.id == result for a in ast.walk(n) if isinstance(a, ast.Assign)
                    for t in a.targets)
        ]  # fmt: skip
        if len(ifs) != 1:
            raise LookupError(f"{path}: {cls}.{method} has {len(ifs)} `if {condition}:` blocks assigning {result}")
        fn = _as_function(method, params, result, ifs[0].body)
    return _run(path, tree, top, [fn], [method], overrides)[method]  # type: ignore[no-any-return]


def _as_function(name: str, params: tuple[str, ...], result: str, body: list[ast.stmt]) -> ast.FunctionDef:
    """``def name(self, *params): <body>; return result`` (the statements kept verbatim, with their lines)."""
    args = ast.arguments(posonlyargs=[], args=[ast.arg(a) for a in ("self", *params)], kwonlyargs=[],
                         kw_defaults=[], defaults=[])  # fmt: skip
    ret = ast.Return(value=ast.Name(id=result, ctx=ast.Load()))
    fn = ast.FunctionDef(name=name, args=args, body=[*body, ret], decorator_list=[], returns=None)
    ast.fix_missing_locations(fn)
    ast.copy_location(fn, body[0])
    return fn
