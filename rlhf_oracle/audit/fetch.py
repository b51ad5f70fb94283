"""Fetch a framework's pinned wheel into a cache at run time (``pip download --no-deps``) and unpack it.

The cache is ``$RLHF_ORACLE_CACHE`` or ``~/.cache/rlhf_oracle/wheels``; a wheel already there is reused, so
the audit runs offline after the first fetch. Nothing of the frameworks' code is committed to this project.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

__all__ = ["AuditUnavailable", "cache_dir", "fetch"]


class AuditUnavailable(RuntimeError):
    """The framework's wheel could not be fetched (offline, or the registry refused)."""


def cache_dir() -> Path:
    root = os.environ.get("RLHF_ORACLE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "rlhf_oracle" / "wheels"


def fetch(distribution: str, version: str) -> Path:
    """The unpacked wheel of ``distribution==version`` (its root holds the importable packages)."""
    cache = cache_dir()
    target = cache / f"{distribution}-{version}"
    if (target / ".complete").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob(f"{distribution.replace('-', '_')}-{version}-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(cache),
               f"{distribution}=={version}"]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AuditUnavailable(f"cannot run pip to fetch {distribution}=={version}: {exc}") from exc
        wheels = sorted(cache.glob(f"{distribution.replace('-', '_')}-{version}-*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise AuditUnavailable(
                f"could not fetch {distribution}=={version} from the package index (offline?): {last}"
            )
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[-1]) as zf:
        zf.extractall(target)
    for data in target.glob("*.data/purelib"):  # wheels that put the package under .data/purelib (OpenRLHF)
        for item in data.iterdir():
            dest = target / item.name
            if not dest.exists():
                item.rename(dest)
    (target / ".complete").write_text(wheels[-1].name)
    return target
