"""MkDocs hooks: render the sympy derivations, the build-time figures and tables, and run the examples.

Markers in the Markdown pages (English ``page.md`` and Chinese ``page.zh.md``) are replaced while building:

``<!-- derivation: NAME -->``
    the statement and the steps of ``rlhf_oracle.derivations.get(NAME)``. The build fails when NAME is
    unknown, when sympy does not confirm the claim (``holds`` is False), when the derivation belongs to another
    page (its ``page`` is not this page's slug), or when a derivation appears on no page of a language.
``<!-- plot: NAME -->`` / ``<!-- table: NAME -->``
    a figure / a Markdown table computed from ``rlhf_oracle.reference`` (see ``build_content.py``).
``<!-- run -->`` right before a fenced ``python`` block
    the block is executed at build time and its printed output is inserted after it; an exception fails the
    build, so every example on the site runs against the current code.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import traceback
from functools import cache
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

sys.path.insert(0, str(Path(__file__).resolve().parent))

import build_content

MARKER = re.compile(r"<!--\s*(derivation|plot|table):\s*([A-Za-z0-9_]+)\s*-->")
RUN_BLOCK = re.compile(
    r"<!--\s*run\s*-->[ \t]*\n(?P<fence>```+)python[^\n]*\n(?P<code>.*?)\n(?P=fence)[ \t]*(?=\n|$)", re.S
)

_rendered: set[str] = set()


def page_slug(src_uri: str) -> str:
    """``ppo-clip.zh.md`` -> ``ppo-clip``."""
    name = src_uri[: -len(".md")] if src_uri.endswith(".md") else src_uri
    return name[: -len(".zh")] if name.endswith(".zh") else name


def page_lang(src_uri: str) -> str:
    return "zh" if src_uri.endswith(".zh.md") else "en"


@cache
def _derivations() -> dict[str, Any]:
    from rlhf_oracle import derivations

    return {d.name: d for d in derivations.all_derivations()}


def render_derivation(name: str, slug: str, lang: str) -> str:
    known = _derivations()
    if name not in known:
        raise PluginError(f"docs page {slug!r}: unknown derivation {name!r}; known: {sorted(known)}")
    d = known[name]
    if not d.holds:
        raise PluginError(f"derivation {name!r} does not hold: sympy did not confirm {d.statement!r}")
    if d.page != slug:
        raise PluginError(f"derivation {name!r} belongs on page {d.page!r}, but its marker is on {slug!r}")
    if lang == "zh" and not d.title_zh:
        raise PluginError(f"derivation {name!r} has no Chinese title (Derivation.title_zh)")
    title = d.title_zh if lang == "zh" else d.title
    label = "sympy 已在构建时验证" if lang == "zh" else "checked by sympy at build time"
    steps_label = "推导步骤" if lang == "zh" else "Steps"
    body = [f'!!! success "{title} ({label})"', "", f"    `{name}`", "", "    $$", f"    {d.statement}", "    $$", ""]
    body += [f"    {steps_label}:", ""]
    for step in d.derivation:
        body += ["    $$", f"    {step}", "    $$", ""]
    _rendered.add(name)
    return "\n".join(body)


@cache
def _plot(name: str, lang: str) -> tuple[str, str]:
    return build_content.PLOTS[name](lang)


@cache
def _table(name: str, lang: str) -> str:
    return build_content.TABLES[name](lang)


@cache
def run_example(code: str) -> str:
    """Execute one example in a fresh namespace and return what it printed."""
    buffer = io.StringIO()
    namespace: dict[str, Any] = {"__name__": "__docs_example__"}
    try:
        with contextlib.redirect_stdout(buffer):
            exec(compile(code, "<docs example>", "exec"), namespace)
    except Exception as exc:
        raise PluginError(f"docs example failed:\n{code}\n\n{traceback.format_exc()}") from exc
    return buffer.getvalue().rstrip("\n")


def _replace_marker(match: re.Match[str], slug: str, lang: str) -> str:
    kind, name = match.group(1), match.group(2)
    if kind == "derivation":
        return render_derivation(name, slug, lang)
    if kind == "plot":
        if name not in build_content.PLOTS:
            raise PluginError(f"docs page {slug!r}: unknown plot {name!r}")
        uri, alt = _plot(name, lang)
        return f'<figure class="plot" markdown="1">\n<img alt="{alt}" src="{uri}">\n</figure>'
    if name not in build_content.TABLES:
        raise PluginError(f"docs page {slug!r}: unknown table {name!r}")
    return _table(name, lang)


def _replace_run(match: re.Match[str], lang: str) -> str:
    output = run_example(match.group("code"))
    label = "输出（构建时运行得到）" if lang == "zh" else "Output (computed when the site was built)"
    fence = match.group("fence")
    return f"{fence}python\n{match.group('code')}\n{fence}\n\n{label}:\n\n{fence}text\n{output}\n{fence}"


def on_pre_build(config: Any, **kwargs: Any) -> None:
    _rendered.clear()


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    src_uri = page.file.src_uri
    slug, lang = page_slug(src_uri), page_lang(src_uri)
    markdown = RUN_BLOCK.sub(lambda m: _replace_run(m, lang), markdown)
    return MARKER.sub(lambda m: _replace_marker(m, slug, lang), markdown)


def on_post_build(config: Any, **kwargs: Any) -> None:
    if "--dirty" in sys.argv or "--dirtyreload" in sys.argv:
        return
    missing = sorted(set(_derivations()) - _rendered)
    if missing:
        raise PluginError(f"derivations rendered on no page of this language build: {missing}")
