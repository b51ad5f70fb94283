"""Hypothesis profiles of the oracle: ``fast`` (CI default) and ``thorough``.

- ``fast``: 30 examples per maths property (10 for the others), no deadline, derandomized (a red run
  reproduces exactly; CI never flakes),
  no example database (nothing written into the user's tree).
- ``thorough``: 500 examples per property, randomised, with the database (failures are replayed first).
- ``thorough-derandomized``: 200 examples, derandomized, no database, no target phase (the slow CI suite).

The checks (``check_<formula>``) run under the *active oracle profile*, never under whatever hypothesis
profile the surrounding project loaded: :func:`set_active` (the pytest option ``--rlhf-oracle-profile``) >
the environment variable ``RLHF_ORACLE_PROFILE`` > ``fast``. Importing this module also registers the two
profiles with hypothesis under the same names, so a test suite can ``settings.load_profile("fast")`` for its
own ``@given`` tests (``tests/conftest.py`` does, from ``RLHF_ORACLE_PROFILE``).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

__all__ = ["ENV_VAR", "PROFILES", "active", "active_settings", "register", "set_active"]

ENV_VAR = "RLHF_ORACLE_PROFILE"

_HEALTH = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
]

PROFILES: dict[str, settings] = {
    "fast": settings(max_examples=30, deadline=None, derandomize=True, database=None, suppress_health_check=_HEALTH),
    "thorough": settings(max_examples=500, deadline=None, suppress_health_check=_HEALTH),
    # thorough, but reproducible and bounded in time: the slow CI suite uses it, so that a red CI run is a real,
    # replayable failure. No target phase: with derandomize, hypothesis's hill-climbing optimiser was seen to spin
    # for minutes on one formula (aggregate, bf16) without generating new inputs.
    "thorough-derandomized": settings(
        max_examples=200,
        deadline=None,
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
        suppress_health_check=_HEALTH,
    ),
}

_active: str | None = None


def register() -> None:
    """Register ``fast`` and ``thorough`` with hypothesis (idempotent)."""
    for name, profile in PROFILES.items():
        settings.register_profile(name, profile)


def set_active(name: str | None) -> None:
    """Choose the oracle profile (``None``: back to the environment variable / ``fast``)."""
    if name is not None and name not in PROFILES:
        raise ValueError(f"unknown rlhf_oracle profile {name!r}; choose one of {sorted(PROFILES)}")
    global _active
    _active = name


def active() -> str:
    """The active oracle profile's name."""
    name = _active or os.environ.get(ENV_VAR, "fast")
    if name not in PROFILES:
        raise ValueError(f"{ENV_VAR}={name!r} is not a profile; choose one of {sorted(PROFILES)}")
    return name


def active_settings() -> settings:
    """The hypothesis settings of the active oracle profile."""
    return PROFILES[active()]


register()
