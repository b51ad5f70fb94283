"""The docs build: strict (broken links and missing references fail), every page in both languages, every
derivation rendered from the sympy module, KaTeX shipped with the site, examples executed at build time."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DERIVATION_PAGES = tuple(
    sorted(
        p.name.removesuffix(".zh.md")
        for p in (Path(__file__).resolve().parents[2] / "docs").glob("*.zh.md")
        if p.name != "index.zh.md"
    )
)
BuiltSite = Any  # the BuiltSite of tests/docs/conftest.py (path, seconds, log)
DOCS = ROOT / "docs"
MARKER = re.compile(r"<!--\s*derivation:\s*([A-Za-z0-9_]+)\s*-->")
CJK = re.compile(r"[\u4e00-\u9fff]")


def _load_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_mkdocs_hooks", ROOT / "scripts" / "docs" / "mkdocs_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _html(site: BuiltSite, *parts: str) -> str:
    return site.path.joinpath(*parts, "index.html").read_text(encoding="utf-8")


def test_strict_build_succeeds(built_site: BuiltSite) -> None:
    assert (built_site.path / "index.html").exists()
    assert (built_site.path / "zh" / "index.html").exists()
    assert built_site.seconds < 120, f"the docs build took {built_site.seconds:.1f} s"


@pytest.mark.parametrize("slug", DERIVATION_PAGES)
def test_derivation_page_in_both_languages(built_site: BuiltSite, slug: str) -> None:
    assert (DOCS / f"{slug}.md").exists() and (DOCS / f"{slug}.zh.md").exists()
    english, chinese = _html(built_site, slug), _html(built_site, "zh", slug)
    assert '<html lang="en"' in english
    assert '<html lang="zh"' in chinese
    assert len(CJK.findall(chinese)) > 300, "the Chinese page has little Chinese text"
    # the language selector links each version to the other
    assert 'hreflang="zh"' in english and f"/zh/{slug}/" in english
    assert 'hreflang="en"' in chinese
    for html in (english, chinese):
        assert 'class="arithmatex"' in html


def test_every_derivation_holds_and_has_one_marker_per_language() -> None:
    derivations = pytest.importorskip("rlhf_oracle.derivations")
    for lang_suffix in (".md", ".zh.md"):
        found: dict[str, list[str]] = {}
        for slug in DERIVATION_PAGES:
            text = (DOCS / f"{slug}{lang_suffix}").read_text(encoding="utf-8")
            for name in MARKER.findall(text):
                found.setdefault(name, []).append(slug)
        for d in derivations.all_derivations():
            assert d.holds, f"{d.name}: sympy does not confirm {d.statement}"
            assert found.get(d.name) == [d.page], f"{d.name} ({lang_suffix}): markers on {found.get(d.name)}"
            assert d.title_zh and any("\u4e00" <= ch <= "\u9fff" for ch in d.title_zh), f"{d.name}: no Chinese title"
        assert set(found) <= {d.name for d in derivations.all_derivations()}


def test_rendered_derivations_carry_the_module_statement(built_site: BuiltSite) -> None:
    derivations = pytest.importorskip("rlhf_oracle.derivations")
    for d in derivations.all_derivations():
        for prefix in ((), ("zh",)):
            html = _html(built_site, *prefix, d.page)
            assert f"<code>{d.name}</code>" in html, f"{d.name} not rendered on {'/'.join((*prefix, d.page))}"
            # arithmatex escapes <, > and &; the first characters of the statement are plain LaTeX
            head = d.statement[:25].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            assert head in html


def test_hook_refuses_unknown_false_and_misplaced_derivations(monkeypatch: pytest.MonkeyPatch) -> None:
    hooks = _load_hooks()
    from mkdocs.exceptions import PluginError

    derivations = pytest.importorskip("rlhf_oracle.derivations")
    good = derivations.get("gae_lambda_zero")
    broken = type(good)(**{**good.__dict__, "holds": False})
    monkeypatch.setattr(hooks, "_derivations", lambda: {good.name: good, "broken": broken})
    assert "$$" in hooks.render_derivation(good.name, good.page, "en")
    with pytest.raises(PluginError, match="unknown derivation"):
        hooks.render_derivation("no_such_claim", good.page, "en")
    with pytest.raises(PluginError, match="does not hold"):
        hooks.render_derivation("broken", good.page, "en")
    with pytest.raises(PluginError, match="belongs on page"):
        hooks.render_derivation(good.name, "ppo-clip", "en")
    with pytest.raises(PluginError, match="docs example failed"):
        hooks.run_example("raise RuntimeError('boom')")


def test_examples_ran_and_plots_were_generated(built_site: BuiltSite) -> None:
    for prefix, label in (((), "Output (computed when the site was built)"), (("zh",), "输出（构建时运行得到）")):
        for slug in DERIVATION_PAGES:
            assert label in _html(built_site, *prefix, slug), f"no executed example on {slug} {prefix}"
        for slug in ("ppo-clip", "kl-estimators", "reward-model"):
            assert 'src="data:image/svg+xml;base64,' in _html(built_site, *prefix, slug)
    # markers never survive into the output
    for html_file in built_site.path.rglob("*.html"):
        text = html_file.read_text(encoding="utf-8")
        assert "<!-- derivation:" not in text and "<!-- plot:" not in text and "<!-- table:" not in text
        assert "<!-- run -->" not in text, html_file


def test_katex_is_served_by_the_site(built_site: BuiltSite) -> None:
    katex = built_site.path / "assets" / "katex"
    assert (katex / "katex.min.js").exists() and (katex / "katex.min.css").exists()
    assert "MIT License" in (katex / "LICENSE").read_text(encoding="utf-8")
    css = (katex / "katex.min.css").read_text(encoding="utf-8")
    woff2 = set(re.findall(r"fonts/(KaTeX_[A-Za-z0-9_-]+\.woff2)", css))
    assert woff2 and all((katex / "fonts" / name).exists() for name in woff2)
    for html_file in built_site.path.rglob("*.html"):
        text = html_file.read_text(encoding="utf-8")
        external = re.findall(r'<script[^>]+src="(https?://[^"]+)"', text)
        external += re.findall(r'<link[^>]+rel="(?:stylesheet|preload|preconnect)"[^>]+href="(https?://[^"]+)"', text)
        assert not external, f"{html_file}: loads {external}"


def test_api_reference_is_generated(built_site: BuiltSite) -> None:
    reference = _html(built_site, "api", "reference")
    torch_impl = _html(built_site, "api", "torch_impl")
    for name in ("ppo_clip_objective", "ppo_clip_grad", "aggregate", "kl_estimate", "gae", "whiten", "ranking_loss"):
        assert f'id="rlhf_oracle.reference.{name}"' in reference
        assert f'id="rlhf_oracle.torch_impl.{name}"' in torch_impl
    # the RST math of the docstrings was turned into KaTeX input
    assert ".. math::" not in reference and ":math:`" not in reference


def test_build_log_has_no_warning(built_site: BuiltSite) -> None:
    warnings = [line for line in built_site.log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert not warnings, "\n".join(warnings)


def test_aggregation_table_matches_reference(built_site: BuiltSite) -> None:
    """The worked example's numbers on the page are those of reference.aggregate today."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts" / "docs"))
    import build_content

    html = _html(built_site, "from-rl-to-lm")
    weights = build_content.aggregation_weights()
    short, long_, value = weights["seq-mean-token-mean"]
    assert long_ == pytest.approx(short / 3)
    assert f"{value:.4g}" in html
    assert Path(build_content.__file__).parent == ROOT / "scripts" / "docs"
