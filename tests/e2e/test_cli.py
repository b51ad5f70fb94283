"""The command line: every config field is a documented flag; precedence; the lazily-registered check command."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from rlhf_oracle import cli
from rlhf_oracle.e2e.config import DemoConfig, field_docs


def test_every_config_field_has_a_one_line_docstring() -> None:
    docs = field_docs(DemoConfig)
    for f in dataclasses.fields(DemoConfig):
        assert docs.get(f.name), f"DemoConfig.{f.name} has no docstring"
        assert "\n" not in docs[f.name], f"DemoConfig.{f.name}: docstring must be one line"


def test_help_shows_every_field_with_its_docstring(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(DemoConfig):
        assert "--" + f.name.replace("_", "-") in out
    assert "Adaptive-KL target in nats per response" in out
    assert "(default: 0.1)" in out


def test_precedence_defaults_then_config_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"seed": 5, "beta": 0.3, "target_kl": 2.0}))
    args = cli.build_parser().parse_args(
        [
            "demo",
            "--config",
            str(path),
            "--beta",
            "0.2",
            "--target-kl",
            "none",
            "--betas",
            "0,0.05",
            "--no-whiten-unbiased",
        ]
    )
    cfg = cli.config_from_args(args)
    assert (cfg.seed, cfg.beta, cfg.target_kl, cfg.betas, cfg.whiten_unbiased) == (5, 0.2, None, (0.0, 0.05), False)
    assert cfg.phase_betas == (0.0, 0.05)
    assert cfg.ppo_steps == DemoConfig().ppo_steps


def test_bad_values_are_refused_naming_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--kl-kind", "k9"]) == 2
    assert "'kl_kind' must be one of" in capsys.readouterr().err
    with pytest.raises(ValueError, match="'minibatch_size'"):
        DemoConfig(rollout_batch_size=16, minibatch_size=32)
    with pytest.raises(ValueError, match="unknown field"):
        DemoConfig.from_dict({"sedd": 1})


def test_config_round_trips_through_json(tmp_path: Path) -> None:
    cfg = DemoConfig(betas=(0.0, 0.2), target_kl=None, seed=3)
    cfg.save(tmp_path / "config.json")
    assert DemoConfig.load(tmp_path / "config.json") == cfg


def test_resume_refuses_configuration_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--resume", str(tmp_path), "--seed", "3"]) == 2
    assert cli.main(["demo", "--resume", str(tmp_path)]) == 2  # no config.json there
    err = capsys.readouterr().err
    assert "--resume takes no configuration flags (got ['seed'])" in err
    assert "has no config.json" in err


def test_check_subcommand_is_delegated_lazily(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def missing() -> None:
        raise ImportError("No module named 'rlhf_oracle.properties.cli'")

    monkeypatch.setattr(cli, "_properties_cli", missing)
    assert cli.main(["check"]) == 2
    assert "property-based oracle is not available" in capsys.readouterr().err

    calls = []

    class FakePropertiesCli:
        @staticmethod
        def add_arguments(parser: object) -> None:
            calls.append("add_arguments")

        @staticmethod
        def run(args: object) -> int:
            calls.append("run")
            return 0

    monkeypatch.setattr(cli, "_properties_cli", lambda: FakePropertiesCli)
    assert cli.main(["check"]) == 0
    assert calls == ["add_arguments", "run"]


def test_demo_never_imports_the_properties_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise RuntimeError("properties layer must not be imported for demo")

    monkeypatch.setattr(cli, "_properties_cli", broken)
    args = cli.build_parser(check_arguments=False).parse_args(["demo", "--seed", "1"])
    assert cli.config_from_args(args).seed == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sft_lr", -1.0, "'sft_lr' must be > 0"),
        ("rm_lr", 0.0, "'rm_lr' must be > 0"),
        ("policy_lr", float("nan"), "'policy_lr' must be > 0"),
        ("critic_lr", -1e-3, "'critic_lr' must be > 0"),
        ("gamma", 1.5, "'gamma' must be in [0, 1]"),
        ("lam", -0.1, "'lam' must be in [0, 1]"),
        ("clip_eps", 0.0, "'clip_eps' must be in (0, 1)"),
        ("dual_clip", 0.5, "'dual_clip' must be > 1 or None"),
        ("loss_agg", "bogus", "'loss_agg' must be one of"),
        ("value_agg", "mean", "'value_agg' must be one of"),
        ("max_grad_norm", 0.0, "'max_grad_norm' must be > 0"),
        ("n_head", 3, "'n_embd' must be a positive multiple of n_head"),
        ("num_threads", 0, "'num_threads' must be >= 1"),
        ("minibatch_size", 0, "'minibatch_size' must be in [1, rollout_batch_size]"),
        ("sft_steps", 0, "'sft_steps' must be >= 1"),
        ("rm_steps", 0, "'rm_steps' must be >= 1"),
        ("ppo_epochs", 0, "'ppo_epochs' must be >= 1"),
        ("target_kl", 0.0, "'target_kl' must be > 0 or None"),
        ("whiten_advantages", "no", "'whiten_advantages' must be bool"),
        ("ppo_steps", 2.5, "'ppo_steps' must be int"),
        ("seed", True, "'seed' must be int"),
    ],
)
def test_every_field_is_validated_before_any_work(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=r"^DemoConfig: " + re.escape(message)):
        DemoConfig(**{field: value})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{bad json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object of DemoConfig fields"),
        ('{"sft_lr": -1}', "DemoConfig: 'sft_lr' must be > 0, got -1"),
        ('{"no_such_field": 1}', "DemoConfig: unknown field(s) ['no_such_field']"),
    ],
)
def test_bad_config_files_are_one_line_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "c.json"
    path.write_text(content)
    assert cli.main(["demo", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--config", str(tmp_path / "nope.json")]) == 2
    assert "cannot read it (No such file or directory)" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals of a machine without CUDA")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "cuda"], "'device' is 'cuda' but CUDA is not available"),
        (["--dtype", "bfloat16"], "'dtype' bfloat16 (autocast) is offered on CUDA only"),
        (["--out", "FILE"], "exists and is not a folder"),
    ],
)
def test_demo_usage_errors_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    argv = [str(afile) if a == "FILE" else a for a in argv]
    out = ["--out", str(tmp_path / "run")] if "--out" not in argv else []
    assert cli.main(["demo", *argv, *out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_audit_output_folder_is_checked_before_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["audit", "verl", "--output", str(tmp_path / "missing" / "a.md")]) == 2
    assert "is in a folder that does not exist" in capsys.readouterr().err
