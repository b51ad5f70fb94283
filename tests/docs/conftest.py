"""The docs site, built once per test session with ``mkdocs build --strict`` into a temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: the derivation pages (slug = file name without .md), each in English and in Chinese: every page with a Chinese
#: twin except the home page (a new formula's page is picked up without editing the tests)
DERIVATION_PAGES = tuple(
    sorted(p.name.removesuffix(".zh.md") for p in (ROOT / "docs").glob("*.zh.md") if p.name != "index.zh.md")
)


@dataclass(frozen=True)
class BuiltSite:
    path: Path
    seconds: float
    log: str


@pytest.fixture(scope="session")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> BuiltSite:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocs_static_i18n", reason="mkdocs-static-i18n is not installed (docs extra)")
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed (exit {proc.returncode}):\n{log[-8000:]}", pytrace=False)
    return BuiltSite(site, seconds, log)


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $DOCS_ARTIFACTS_DIR if set, else a pytest temporary directory."""
    configured = os.environ.get("DOCS_ARTIFACTS_DIR")
    path = Path(configured) if configured else tmp_path_factory.mktemp("docs-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path
