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
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

__all__ = ["base_namespace", "load"]


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


def load(path: Path, names: list[str], overrides: dict[str, Any] | None = None) -> SimpleNamespace:
    """The functions/classes ``names`` of the source file ``path``, with what they need from the same file."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))
    top: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            node.decorator_list = []  # (dropped before the dependency walk: registries pull in whole modules)
        for name in _defined(node):
            top[name] = node
    missing = [n for n in names if n not in top]
    if missing:
        raise LookupError(f"{path}: no top-level definition of {missing}")
    overrides = overrides or {}
    wanted: set[int] = set()
    stack = list(names)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or name not in top or name in overrides:
            continue
        seen.add(name)
        node = top[name]
        wanted.add(id(node))
        stack += [sub.id for sub in ast.walk(node) if isinstance(sub, ast.Name)]
    body = []
    for node in tree.body:
        if id(node) in wanted:
            body.append(node)
    module = ast.Module(body=body, type_ignores=[])
    code = compile(module, str(path), "exec", flags=__future__.annotations.compiler_flag, dont_inherit=True)
    namespace = {**base_namespace(), "__name__": f"rlhf_oracle_audit.{Path(path).stem}", **overrides}
    exec(code, namespace)
    return SimpleNamespace(**{n: namespace[n] for n in names})
