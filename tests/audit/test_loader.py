"""The audit's source loader and its command line, offline (no wheel is fetched here)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from rlhf_oracle import cli
from rlhf_oracle.audit import fetch as fetch_module
from rlhf_oracle.audit.loader import load

SOURCE = textwrap.dedent(
    """
    import deepspeed  # never imported by the loader
    from .utils import helper_from_elsewhere

    SCALE = 2.0
    UNUSED = deepspeed.something()


    def registry(fn):
        raise RuntimeError("decorators are dropped")


    def _double(x):
        return SCALE * x


    @registry
    def loss(x: "deepspeed.Tensor", mask):
        return (_double(x) * mask).sum() / mask.sum()


    def other(x):
        return helper_from_elsewhere(x)
    """
)


def test_loads_a_function_with_its_helpers_and_constants_only(tmp_path: Path) -> None:
    path = tmp_path / "framework_module.py"
    path.write_text(SOURCE)
    ns = load(path, ["loss"])
    x, m = torch.tensor([1.0, 3.0]), torch.tensor([1.0, 0.0])
    assert ns.loss(x, m).item() == 2.0  # SCALE * 1, over one valid token


def test_overrides_supply_names_imported_from_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "framework_module.py"
    path.write_text(SOURCE)
    ns = load(path, ["other"], {"helper_from_elsewhere": lambda x: x + 1})
    assert ns.other(1) == 2


def test_missing_names_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "framework_module.py"
    path.write_text(SOURCE)
    with pytest.raises(LookupError, match="no_such_function"):
        load(path, ["no_such_function"])


def test_audit_command_offline_is_a_clear_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def offline(distribution: str, version: str) -> Path:
        raise fetch_module.AuditUnavailable(f"could not fetch {distribution}=={version} from the package index")

    monkeypatch.setattr("rlhf_oracle.audit.matrix.fetch", offline)
    assert cli.main(["audit", "verl"]) == 2
    err = capsys.readouterr().err
    assert "skipped" in err and "verl==0.9.1" in err


def test_audit_command_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["audit", "verl", "--max-examples", "0"]) == 2
    assert "--max-examples" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["audit", "deepspeed"])
