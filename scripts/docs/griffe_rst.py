"""Griffe extension: turn the reStructuredText bits of the package's docstrings into Markdown for mkdocstrings.

The docstrings are written for both Sphinx-style readers and ``help()``; they use three RST constructs that
Markdown does not know:

- ``.. math::`` blocks (an indented body) become ``$$ ... $$`` display math, typeset by KaTeX;
- ``:math:`x``` becomes ``$x$`` inline math;
- ``:func:`name```, ``:class:``, ``:meth:``, ``:mod:``, ``:data:``, ``:attr:`` become a mkdocstrings
  cross-reference when the target is documented on the API pages, and inline code otherwise (a link that
  cannot resolve would fail the strict build).

Loaded by mkdocs.yml (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path
from typing import Any

import griffe

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED_PACKAGES = ("rlhf_oracle.reference", "rlhf_oracle.torch_impl", "rlhf_oracle.derivations")

_ROLE = re.compile(r":(func|class|meth|mod|data|attr|obj):`~?([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_MATH_DIRECTIVE = re.compile(r"^(\s*)\.\. math::\s*$")
_GLUED_BRACKETS = re.compile(r"(?<=\w)\[([^\]\n`]+)\]\(")


@cache
def _exports(package: str) -> frozenset[str]:
    """Names in ``__all__`` of a documented package (read from its source, without importing it)."""
    parts = package.split(".")
    path = ROOT.joinpath(*parts, "__init__.py")
    if not path.exists():
        path = ROOT.joinpath(*parts[:-1], parts[-1] + ".py")
    if not path.exists():
        return frozenset()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return frozenset(ast.literal_eval(node.value))
    return frozenset()


def resolve(target: str, owner_path: str) -> str | None:
    """The documented identifier that ``target`` (as written in the docstring of ``owner_path``) names."""
    if target in DOCUMENTED_PACKAGES:
        return target
    for package in DOCUMENTED_PACKAGES:
        if target.startswith(package + "."):
            name = target[len(package) + 1 :]
            return target if name in _exports(package) else None
    if "." not in target:
        owner_packages = [p for p in DOCUMENTED_PACKAGES if owner_path == p or owner_path.startswith(p + ".")]
        for package in owner_packages:
            if target in _exports(package):
                return f"{package}.{target}"
    return None


def _convert_math_blocks(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _MATH_DIRECTIVE.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent = match.group(1)
        i += 1
        body: list[str] = []
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
            body.append(lines[i].strip())
            i += 1
        while body and not body[-1]:
            body.pop()
        while body and not body[0]:
            body.pop(0)
        # blank lines inside a display formula would end the Markdown block; KaTeX does not need them
        out.extend([indent + "$$", *(indent + line for line in body if line), indent + "$$", ""])
    return "\n".join(out)


def rst_to_markdown(text: str, owner_path: str) -> str:
    """Convert the RST constructs of one docstring (see the module docstring)."""
    text = _convert_math_blocks(text)
    text = _MATH_ROLE.sub(lambda m: f"${m.group(1).strip()}$", text)

    def role(m: re.Match[str]) -> str:
        target = m.group(2).strip()
        shown = target.rsplit(".", 1)[-1] if m.group(0).find("`~") >= 0 else target
        identifier = resolve(target, owner_path)
        return f"[`{shown}`][{identifier}]" if identifier else f"`{shown}`"

    text = _ROLE.sub(role, text)
    # "S[pi](s_t)" is notation, not a Markdown link: a bracket glued to a word is escaped
    return _GLUED_BRACKETS.sub(lambda m: f"\\[{m.group(1)}\\](", text)


class RstToMarkdown(griffe.Extension):
    """Rewrite each docstring once, when griffe has loaded its object."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value, obj.path)
