"""Open every page of the built site (English and Chinese) in headless Chromium and check that the math was
typeset by the KaTeX the site ships, that no raw TeX delimiters are left in the visible text, and that the page
asks nothing of any host but the local server. Screenshots go to the artifacts directory.

Needs the Debian ``chromium`` package at /usr/bin/chromium (never ``playwright install``).
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
DERIVATION_PAGES = tuple(
    sorted(
        p.name.removesuffix(".zh.md")
        for p in (Path(__file__).resolve().parents[2] / "docs").glob("*.zh.md")
        if p.name != "index.zh.md"
    )
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium (apt-get install chromium)"
    ),
]

# Visible text of the article with typeset math, code and KaTeX's hidden MathML removed: what must not hold TeX.
VISIBLE_TEXT_JS = """() => {
  const article = document.querySelector("article") || document.body;
  const clone = article.cloneNode(true);
  clone.querySelectorAll(".katex, pre, code, script, style").forEach((el) => el.remove());
  return clone.innerText;
}"""

MATH_STATE_JS = """() => ({
  arithmatex: document.querySelectorAll(".arithmatex").length,
  untypeset: [...document.querySelectorAll(".arithmatex")].filter((el) => !el.querySelector(".katex")).length,
  katex: document.querySelectorAll(".katex").length,
  errors: [...document.querySelectorAll(".katex-error")].map((el) => el.getAttribute("title") || el.textContent),
})"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server(built_site: Any) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(built_site.path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def _pages(site: Path) -> list[str]:
    """URL paths of every page: each index.html of the site (English at the root, Chinese under zh/)."""
    paths = sorted(p.parent.relative_to(site).as_posix() for p in site.rglob("index.html"))
    return [("" if p == "." else p + "/") for p in paths]


def test_every_page_typesets_its_math_offline(built_site: Any, server: str, browser: Any, artifacts_dir: Path) -> None:
    pages = _pages(built_site.path)
    assert len(pages) >= 2 * (len(DERIVATION_PAGES) + 1), pages
    for slug in DERIVATION_PAGES:
        assert f"{slug}/" in pages and f"zh/{slug}/" in pages
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    foreign: list[str] = []
    failed: list[str] = []

    def on_request(request: Any) -> None:
        url = urlparse(request.url)
        if url.scheme in ("data", "blob", "about"):
            return
        if url.hostname not in LOCAL_HOSTS:
            foreign.append(request.url)

    def on_response(response: Any) -> None:
        # Material's language selector first looks for the current page in the other language's sitemap.xml,
        # next to the alternate link (a per-page link here, from mkdocs-static-i18n); the 404 is harmless (it then
        # follows the link itself), and sitemap.xml is no asset of the page.
        if response.status >= 400 and not response.url.endswith("/sitemap.xml"):
            failed.append(f"{response.status} {response.url}")

    def on_request_failed(request: Any) -> None:
        # leaving a page aborts what its search worker was still loading: not a failure of the page
        if "ERR_ABORTED" not in (request.failure or ""):
            failed.append(f"{request.failure} {request.url}")

    context.on("request", on_request)
    context.on("response", on_response)
    context.on("requestfailed", on_request_failed)
    page = context.new_page()
    console_errors: list[str] = []
    page.on("pageerror", lambda exc: console_errors.append(str(exc)))
    problems: list[str] = []
    for path in pages:
        page.goto(server + path, wait_until="load")
        page.evaluate("document.fonts.ready")
        state = page.evaluate(MATH_STATE_JS)
        text = page.evaluate(VISIBLE_TEXT_JS)
        name = path.strip("/").replace("/", "__") or "home"
        derivation_page = path.strip("/").split("/")[-1] in DERIVATION_PAGES
        page.screenshot(path=str(artifacts_dir / f"{name}.png"), full_page=derivation_page or path in ("", "zh/"))
        if state["arithmatex"]:
            if state["untypeset"] or not state["katex"]:
                problems.append(f"{path}: {state['untypeset']} of {state['arithmatex']} formulas not typeset")
            if state["errors"]:
                problems.append(f"{path}: KaTeX errors {state['errors'][:3]}")
        elif derivation_page:
            problems.append(f"{path}: a derivation page without math")
        for raw in ("$$", "\\(", "\\[", "\\)", "\\]"):
            if raw in text:
                at = text.index(raw)
                problems.append(f"{path}: raw {raw!r} in the visible text: ...{text[max(0, at - 60) : at + 60]!r}...")
    context.close()
    assert not problems, "\n".join(problems)
    assert not foreign, f"requests to hosts other than the local server: {sorted(set(foreign))[:10]}"
    assert not failed, f"failed requests: {failed[:10]}"
    assert not console_errors, f"JavaScript errors: {console_errors[:5]}"


def test_language_switch_leads_to_the_translation(built_site: Any, server: str, browser: Any) -> None:
    page = browser.new_page()
    try:
        page.goto(server + "ppo-clip/", wait_until="load")
        link = page.locator('a[hreflang="zh"]').first
        href = link.get_attribute("href")
        assert href is not None
        page.goto(server + "ppo-clip/" + href if not href.startswith("/") else server.rstrip("/") + href)
        assert page.url.rstrip("/").endswith("zh/ppo-clip")
        assert page.evaluate("document.documentElement.lang") == "zh"
        assert "经典 PPO-Clip" in page.title() or "PPO-Clip" in page.inner_text("h1")
    finally:
        page.close()
