"""The pytest plugin (the ``pytest11`` entry point, auto-loaded once ``rlhf-oracle`` is installed): the
``rlhf_oracle`` fixture and the profile option.

In a test suite::

    def test_my_policy_loss(rlhf_oracle):
        rlhf_oracle.check("policy_loss", my_policy_loss, agg="token-mean")

    def test_my_kl(rlhf_oracle):
        rlhf_oracle.kl_estimate(my_kl, kind="k3", dtype=torch.float32)   # same as .check("kl_estimate", ...)

A mismatch fails the test with the oracle's report (shrunk counter-example, reference snippet, diagnosis).

Installing only the NumPy reference registers this entry point too: without torch and hypothesis (the ``torch``
extra) the plugin registers nothing.

Options: ``--rlhf-oracle-profile {fast,thorough}`` (default: ``$RLHF_ORACLE_PROFILE``, else ``fast``) chooses how
hard the checks search (see :mod:`rlhf_oracle.properties.profiles`); it does not change the hypothesis profile of
the rest of the suite.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

try:
    import hypothesis  # noqa: F401
    import torch  # noqa: F401
except ImportError:  # the NumPy-only install (pip install rlhf-oracle): no fixture, no option
    AVAILABLE = False
else:
    AVAILABLE = True

__all__ = ["AVAILABLE", "Oracle"]


class Oracle:
    """What the ``rlhf_oracle`` fixture returns: ``check(formula, candidate, **options)`` plus one method per
    formula (``oracle.policy_loss(candidate, **options)``). Options are those of ``check_<formula>``."""

    def __init__(self, profile: str) -> None:
        self.profile = profile

    def check(self, formula: str, candidate: Callable[..., Any], **options: Any) -> Any:
        __tracebackhide__ = True  # a failure points at the test's line, not at the oracle's internals
        from rlhf_oracle.properties.checks import check

        return check(formula, candidate, **options)

    def run(self, formula: str, candidate: Callable[..., Any], **options: Any) -> Any:
        """Like :meth:`check` but returns the report without failing (inspect ``.passed``, ``.message()``)."""
        __tracebackhide__ = True
        from rlhf_oracle.properties.checks import run_check

        return run_check(formula, candidate, **options)

    def __getattr__(self, formula: str) -> Callable[..., Any]:
        from rlhf_oracle.properties.registry import REGISTRY

        if formula not in REGISTRY:
            raise AttributeError(f"rlhf_oracle has no formula {formula!r}; known: {', '.join(REGISTRY)}")

        def run(candidate: Callable[..., Any], **options: Any) -> Any:
            __tracebackhide__ = True
            return self.check(formula, candidate, **options)

        return run

    def __repr__(self) -> str:
        return f"<rlhf_oracle profile={self.profile!r}>"


if AVAILABLE:  # a plugin that fails to import breaks every test run of the project that installed it
    from rlhf_oracle.properties import profiles

    def pytest_addoption(parser: pytest.Parser) -> None:
        group = parser.getgroup("rlhf_oracle", "rlhf_oracle: check PPO/RLHF formulas against the reference")
        group.addoption(
            "--rlhf-oracle-profile",
            action="store",
            choices=sorted(profiles.PROFILES),
            default=None,
            help=f"how hard the rlhf_oracle checks search (default: ${profiles.ENV_VAR} or 'fast')",
        )

    def pytest_configure(config: pytest.Config) -> None:
        config.addinivalue_line(
            "markers", "rlhf_oracle: a test that checks a function against the rlhf_oracle reference"
        )
        profiles.set_active(config.getoption("--rlhf-oracle-profile", default=None))

    def pytest_unconfigure(config: pytest.Config) -> None:
        profiles.set_active(None)

    def pytest_report_header(config: pytest.Config) -> str:
        # every project with the package installed loads this plugin: a bad environment variable must not stop its
        # session; only the tests that use the fixture fail, with the same one-line message
        try:
            name = profiles.active()
        except ValueError as exc:
            return f"rlhf_oracle: {exc} (tests using the rlhf_oracle fixture will fail)"
        return f"rlhf_oracle: profile {name} ({profiles.active_settings().max_examples} examples/property)"

    @pytest.fixture
    def rlhf_oracle() -> Iterator[Oracle]:
        """Check functions against the rlhf_oracle reference: ``rlhf_oracle.check("policy_loss", fn, agg=...)``."""
        try:
            name = profiles.active()
        except ValueError as exc:
            pytest.fail(f"rlhf_oracle: {exc}", pytrace=False)
        yield Oracle(name)
