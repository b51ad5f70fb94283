"""The pytest plugin: a user's test checks a function against the reference in a few lines."""

from __future__ import annotations

import pytest

CONFTEST_FREE_TEST = """
import torch

def my_token_mean_loss(logp, logp_old, advantages, mask, clip_eps=0.2):
    m = mask.bool()
    ratio = torch.exp(torch.where(m, logp - logp_old, 0.0))
    adv = torch.where(m, advantages, 0.0)
    obj = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    return -torch.where(m, obj, 0.0).sum() / m.sum()

def test_good(rlhf_oracle):  # 0/0 = NaN on an all-masked batch: an edge case the user accepts by name
    report = rlhf_oracle.check("policy_loss", my_token_mean_loss, agg="token-mean", waive=("edge_cases",))
    assert report.verdicts()["edge_cases"] == "waived"

def test_attribute_style(rlhf_oracle):
    rlhf_oracle.policy_loss(my_token_mean_loss, agg="token-mean", dtype=torch.float32, waive="edge_cases")

def test_wrong_convention(rlhf_oracle):
    rlhf_oracle.check("policy_loss", my_token_mean_loss)

def test_profile(rlhf_oracle):
    print("PROFILE", rlhf_oracle.profile)
"""


def test_fixture_passes_and_fails_with_the_report(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=CONFTEST_FREE_TEST)
    result = pytester.runpytest_inprocess("-q", "-s")
    result.assert_outcomes(passed=3, failed=1)
    out = result.stdout.str()
    assert "PROFILE fast" in out
    assert "matches agg='token-mean'" in out
    assert "R.policy_loss(" in out


def test_profile_option_and_header(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user="def test_profile(rlhf_oracle):\n    assert rlhf_oracle.profile == 'thorough'\n")
    result = pytester.runpytest_inprocess("--rlhf-oracle-profile", "thorough")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["rlhf_oracle: profile thorough (500 examples/property)"])


def test_profile_from_the_environment(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLHF_ORACLE_PROFILE", "thorough")
    pytester.makepyfile(test_user="def test_profile(rlhf_oracle):\n    assert rlhf_oracle.profile == 'thorough'\n")
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=1)


def test_plugin_is_registered_by_the_entry_point() -> None:
    from importlib.metadata import entry_points

    names = {ep.value for ep in entry_points(group="pytest11")}
    assert "rlhf_oracle.pytest_plugin" in names


def test_the_entry_point_is_harmless_without_torch() -> None:
    """A NumPy-only install also registers the entry point: loading it must not fail, and registers nothing."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # import torch -> ImportError, as on a machine without it\n"
        "import rlhf_oracle.pytest_plugin as p\n"
        "assert not hasattr(p, 'rlhf_oracle') and not hasattr(p, 'pytest_addoption')\n"
        "assert 'rlhf_oracle.properties' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    import rlhf_oracle.pytest_plugin as plugin

    assert hasattr(plugin, "rlhf_oracle") and hasattr(plugin, "pytest_addoption")


def test_bad_profile_variable_fails_only_the_oracle_tests(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project with the package installed but a typo in RLHF_ORACLE_PROFILE: its session runs; only the tests
    that use the fixture fail, with a one-line message naming the variable."""
    monkeypatch.setenv("RLHF_ORACLE_PROFILE", "thourough")
    pytester.makepyfile(test_user="def test_unrelated():\n    assert 1 + 1 == 2\n\n"
                                  "def test_oracle(rlhf_oracle):\n    pass\n")  # fmt: skip
    result = pytester.runpytest_inprocess("-q")
    result.assert_outcomes(passed=1, errors=1)
    out = result.stdout.str()
    assert "RLHF_ORACLE_PROFILE='thourough' is not a profile" in out
    assert "Traceback" not in out and "pytest_plugin.py" not in out


def test_failure_shows_no_internal_frames_and_the_snippet_calls_the_candidate(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        mylosses="def kl(logp, logp_ref, kind='k1'):\n    return logp_ref - logp  # the sign of k1 flipped\n",
        test_user="import mylosses\n\ndef test_kl(rlhf_oracle):\n    rlhf_oracle.kl_estimate(mylosses.kl)\n",
    )
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "rlhf_oracle/properties/engine.py" not in out and "rlhf_oracle/properties/report.py" not in out
    assert "from mylosses import kl" in out and "actual = kl(t(logp), t(logp_ref)" in out
    assert 'print("actual:  ", actual)' in out
