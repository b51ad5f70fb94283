"""``rlhf-oracle check`` on functions defined in files outside the package."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlhf_oracle.cli import check as cli

LOSSES = textwrap.dedent(
    """
    import torch

    def token_mean_loss(logp, logp_old, advantages, mask, clip_eps=0.2):
        m = mask.bool()
        ratio = torch.exp(torch.where(m, logp - logp_old, 0.0))
        adv = torch.where(m, advantages, 0.0)
        obj = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
        return -torch.where(m, obj, 0.0).sum() / m.sum()

    def ratio_loss(ratio, advantages):
        return torch.minimum(ratio * advantages, ratio.clamp(0.8, 1.2) * advantages), {"n": 1}
    """
)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def losses(tmp_path: Path) -> Path:
    path = tmp_path / "my_losses.py"
    path.write_text(LOSSES)
    return path


def test_failing_function_prints_table_and_diagnosis(losses: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.run(_parse([f"{losses}:token_mean_loss", "--formula", "policy_loss", "--max-examples", "10"]))
    out = capsys.readouterr().out
    assert code == 1
    assert "values" in out and "FAILED" in out
    assert "matches agg='token-mean'" in out
    assert "R.policy_loss(" in out


def test_convention_flag_makes_it_pass(losses: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [f"{losses}:token_mean_loss", "-f", "policy_loss", "--agg", "token-mean", "--max-examples", "10"]
    # the maths agree; an all-masked batch gives NaN where the reference raises: a finding ("differs"), exit 0
    assert cli.run(_parse(argv)) == 0
    out = capsys.readouterr().out
    assert "edge_cases" in out and "differs" in out and "all masked" in out
    assert cli.run(_parse([*argv, "--strict"])) == 1  # --strict fails it
    out = capsys.readouterr().out
    assert "FAILED" in out and "all masked" in out
    assert cli.run(_parse([*argv, "--strict", "--waive", "edge_cases"])) == 0
    out = capsys.readouterr().out
    assert "passed" in out and "gradients" in out and "waived" in out


def test_waive_names_are_checked(losses: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [f"{losses}:token_mean_loss", "-f", "policy_loss", "--waive", "values"]
    assert cli.run(_parse(argv)) == 2
    assert "--waive" in capsys.readouterr().err.replace("\n", " ")


def test_adapters_from_the_command_line(losses: Path) -> None:
    argv = [f"{losses}:ratio_loss", "-f", "ppo_clip_objective", "-a", "ratio", "-a", "first", "--clip-eps", "0.2",
            "--clip-eps-high", "none", "--dual-clip", "none", "--max-examples", "10", "--dtype", "float32"]  # fmt: skip
    assert cli.run(_parse(argv)) == 0


def test_usage_errors_exit_2(losses: Path) -> None:
    assert cli.run(_parse([f"{losses}:nope", "-f", "policy_loss"])) == 2
    assert cli.run(_parse([f"{losses}:token_mean_loss", "-f", "no_such_formula"])) == 2
    assert cli.run(_parse([f"{losses}:token_mean_loss", "-f", "gae", "--agg", "token-mean"])) == 2
    assert cli.run(_parse(["no/such/file.py:f", "-f", "gae"])) == 2
    assert cli.run(_parse([])) == 2


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(_parse(["--list"])) == 0
    assert "grpo_advantages" in capsys.readouterr().out


def test_parse_value() -> None:
    assert cli.parse_value("none") is None
    assert cli.parse_value("True") is True
    assert cli.parse_value("3") == 3
    assert cli.parse_value("0.5") == 0.5
    assert cli.parse_value("token-mean") == "token-mean"


def test_module_target_through_the_installed_entry_point(losses: Path) -> None:
    exe = Path(sys.executable).with_name("rlhf-oracle")
    if not exe.exists():
        pytest.skip("rlhf-oracle entry point not installed")
    result = subprocess.run(
        [str(exe), "check", "my_losses:token_mean_loss", "-f", "policy_loss", "--agg", "token-mean",
         "--max-examples", "5", "--waive", "edge_cases"],
        cwd=losses.parent, capture_output=True, text=True, env={"PYTHONPATH": str(losses.parent), "PATH": ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


# ---- usage errors: one line on stderr, exit 2 (issue 11)

BAD = textwrap.dedent(
    """
    def broken(:
        pass
    """
)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-f", "policy_loss", "--clip-eps", "-0.1"],
            "invalid convention: policy_loss: 'clip_eps' must be > 0, got -0.1",
        ),
        (["-f", "policy_loss", "--agg", "bogus"], "invalid convention: policy_loss: 'agg' must be one of"),
        (["-f", "policy_loss", "--max-examples", "0"], "--max-examples must be >= 1, got 0"),
        (["-f", "policy_loss", "--timeout", "0"], "--timeout must be > 0 seconds, got 0"),
        (["-f", "policy_loss", "--adapter", "rename:x"], "adapter 'rename:x': write rename:reference_name=your_name"),
        (["-f", "policy_loss", "--adapter", "reorder:a,b"], "adapter 'reorder:a,b': write reorder:i,j,..."),
        (["-f", "policy_loss", "--adapter", "negate:3"], "adapter 'negate:3': negate takes no argument"),
        (
            ["-f", "policy_loss", "--adapter", "rename:cliprange=clip_eps"],
            "--adapter rename: ['cliprange'] not a parameter of reference.policy_loss",
        ),
        (
            ["-f", "kl_shaped_rewards", "--beta", "0.1"],
            "['beta'] is an input of reference.kl_shaped_rewards (no default: the oracle draws it)",
        ),
        (["--list"], "--list takes no target or --formula"),
    ],
)
def test_usage_errors_are_one_line(
    losses: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert cli.run(_parse([f"{losses}:token_mean_loss", *args])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rlhf-oracle check: error: ") and message in err, err


def test_import_errors_name_the_file(losses: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = losses.with_name("bad_syntax.py")
    bad.write_text(BAD)
    assert cli.run(_parse([f"{bad}:broken", "-f", "gae"])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot import {bad}: invalid syntax ({bad}, line 2)" in err, err
    assert cli.run(_parse([f"{losses}:nope", "-f", "gae"])) == 2
    assert f"{losses} has no attribute 'nope'" in capsys.readouterr().err


def test_unavailable_device_is_a_usage_error(losses: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert cli.run(_parse([f"{losses}:token_mean_loss", "-f", "policy_loss", "--device", "cuda"])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda is not available here" in err


def test_timeout_stops_a_hanging_candidate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "hangs.py"
    path.write_text("def kl(logp, logp_ref, kind='k1'):\n    while True:\n        pass\n")
    assert cli.run(_parse([f"{path}:kl", "-f", "kl_estimate", "--timeout", "1"])) == 1
    assert "did not finish within --timeout 1 s" in capsys.readouterr().err


def _entry_point() -> Path:
    exe = Path(sys.executable).with_name("rlhf-oracle")
    if not exe.exists():
        pytest.skip("rlhf-oracle entry point not installed")
    return exe


def test_package_in_the_current_directory_is_importable(tmp_path: Path) -> None:
    """``my_project.losses:fn`` from the project's root, without PYTHONPATH (as ``python -m`` would find it)."""
    (tmp_path / "my_project").mkdir()
    (tmp_path / "my_project" / "__init__.py").write_text("")
    (tmp_path / "my_project" / "losses.py").write_text(LOSSES)
    result = subprocess.run(
        [str(_entry_point()), "check", "my_project.losses:token_mean_loss", "-f", "policy_loss", "--agg",
         "token-mean", "--max-examples", "5", "--waive", "edge_cases"],
        cwd=tmp_path, capture_output=True, text=True, env={"PATH": "", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_bad_flags_and_list_through_the_entry_point(tmp_path: Path) -> None:
    exe = str(_entry_point())
    bad = subprocess.run([exe, "check", "x.py:f", "-f", "gae", "--no-such-flag"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "unrecognized arguments: --no-such-flag" in bad.stderr
    # piped: the table is not folded into 80 columns, so the longest convention list stays on one line
    listed = subprocess.run([exe, "check", "--list"], capture_output=True, text=True)
    assert listed.returncode == 0
    line = next(ln for ln in listed.stdout.splitlines() if "policy_loss " in ln)
    assert "clip_eps" in line and "dual_clip" in line and "agg" in line, line


SPAN_LOSS = textwrap.dedent(
    """
    import torch

    def span_mean(values, mask, agg="seq-mean-token-mean"):
        # |o_b| counted as the span from the first to the last valid token: right only without holes
        m = mask.bool()
        idx = torch.arange(m.shape[1]).expand_as(m)
        first = torch.where(m, idx, m.shape[1]).amin(-1)
        last = torch.where(m, idx, -1).amax(-1)
        rows = torch.where(m, values, 0.0).sum(-1) / (last - first + 1).clamp_min(1)
        return rows.mean()
    """
)


def test_mask_layout_lets_a_trainer_without_holes_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "span.py"
    path.write_text(SPAN_LOSS)
    base = [
        f"{path}:span_mean",
        "-f",
        "aggregate",
        "--agg",
        "seq-mean-token-mean",
        "--max-examples",
        "30",
        "--waive",
        "edge_cases,masked_slots",
    ]
    assert cli.run(_parse(base)) == 1  # masks with holes (multi-turn) expose the span count
    assert cli.run(_parse([*base, "--mask-layout", "contiguous"])) == 0
    assert cli.run(_parse([*base, "--mask-layout", "right"])) == 0
    capsys.readouterr()


def test_a_function_returning_none_is_diagnosed_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "forgot.py"
    path.write_text("def kl(logp, logp_ref, kind='k1'):\n    d = logp - logp_ref  # no return\n")
    assert cli.run(_parse([f"{path}:kl", "-f", "kl_estimate", "--max-examples", "5"])) == 1
    out = capsys.readouterr().out
    assert "the candidate returned None instead of a tensor (a missing `return`?)" in out
    assert "overflow" not in out


def _snippet(out: str) -> str:
    """The first reproduction snippet of a report, as printed (the counter-example block, dedented)."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if "counter-example" in ln) + 1
    block = []
    for ln in lines[start:]:
        if ln.strip() and not ln.startswith("    "):
            break
        block.append(ln)
    return textwrap.dedent("\n".join(block))


@pytest.mark.parametrize(
    ("target", "argv"),
    [
        ("token_mean_loss", ["-f", "policy_loss"]),  # a file target: the snippet loads the file
        ("ratio_loss", ["-f", "ppo_clip_objective", "-a", "ratio", "-a", "first", "--clip-eps", "0.3"]),  # adapters
    ],
    ids=["file-target", "file-target-with-adapters"],
)
def test_the_printed_snippet_runs_and_reproduces(
    losses: Path, capsys: pytest.CaptureFixture[str], target: str, argv: list[str]
) -> None:
    assert cli.run(_parse([f"{losses}:{target}", *argv, "--max-examples", "10"])) == 1
    snippet = _snippet(capsys.readouterr().out)
    assert "# actual" not in snippet  # the call is live, not commented out
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    expected, actual = (ln.split(":", 1)[1] for ln in result.stdout.splitlines()[-2:])
    assert expected.strip() != actual.strip()  # it reproduces the mismatch


MODULE_LOSS = textwrap.dedent(
    """
    import torch
    from torch import nn

    class PolicyLoss(nn.Module):  # OpenRLHF style: hyper-parameters in the constructor, (loss, stats) out
        def __init__(self, clip_eps: float = 0.2) -> None:
            super().__init__()
            self.clip_eps = clip_eps

        def forward(self, log_probs, old_log_probs, advantages, action_mask):
            m = action_mask.bool()
            ratio = torch.exp(torch.where(m, log_probs - old_log_probs, 0.0))
            adv = torch.where(m, advantages, 0.0)
            surr = torch.minimum(ratio * adv, ratio.clamp(1 - self.clip_eps, 1 + self.clip_eps) * adv)
            return -torch.where(m, surr, 0.0).sum() / m.sum(), {"clipfrac": 0.0}

    class NeedsArgs(nn.Module):
        def __init__(self, clip_eps):
            super().__init__()

        def forward(self, log_probs, old_log_probs, advantages, action_mask):
            return log_probs.sum()
    """
)


@pytest.mark.parametrize("attr", ["PolicyLoss", "PolicyLoss.forward"])
def test_nn_module_losses_are_checkable_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], attr: str
) -> None:
    path = tmp_path / "modules.py"
    path.write_text(MODULE_LOSS)
    argv = [f"{path}:{attr}", "-f", "policy_loss", "-a", "first", "--agg", "token-mean", "--max-examples", "10"]
    assert cli.run(_parse(argv)) == 0, capsys.readouterr().out
    # a wrong convention fails, and the printed snippet builds the module and runs as printed
    assert cli.run(_parse([*argv[:-4], "--agg", "seq-mean-token-mean", "--max-examples", "10"])) == 1
    snippet = _snippet(capsys.readouterr().out)
    assert "target.PolicyLoss()" in snippet
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_nn_module_instances_and_constructor_errors_in_python(tmp_path: Path) -> None:
    from rlhf_oracle.properties import adapters, run_check

    path = tmp_path / "modules.py"
    path.write_text(MODULE_LOSS)
    module = cli.load_target(f"{path}:PolicyLoss")
    report = run_check("policy_loss", module(clip_eps=0.3), adapter=adapters.first, agg="token-mean", clip_eps=0.3,
                       max_examples=10)  # fmt: skip
    assert report.passed, report.message()
    with pytest.raises(TypeError, match=r"run_check: the candidate is the nn.Module class NeedsArgs, whose "):
        run_check("policy_loss", cli.load_target(f"{path}:NeedsArgs"), max_examples=10)


def test_a_target_that_exits_at_import_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "script.py"
    path.write_text("import sys\nsys.exit(3)\n\ndef f(values, mask):\n    return values.sum()\n")
    assert cli.run(_parse([f"{path}:f", "-f", "aggregate"])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "called sys.exit(3)" in err, err


def test_json_format_for_ci_tools(losses: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert cli.run(_parse([f"{losses}:token_mean_loss", "-f", "policy_loss", "--format", "json",
                           "--max-examples", "10"])) == 1  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert data["formula"] == "policy_loss" and data["passed"] is False
    values = next(p for p in data["properties"] if p["name"] == "values")
    assert values["status"] == "FAILED"
    assert any("agg='token-mean'" in line for line in values["failure"]["diagnosis"])
    assert "R.policy_loss(" in values["failure"]["snippet"]


def test_preset_from_the_command_line(losses: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # token_mean_loss is TRL's dapo/bnpo aggregation: the trl:dapo preset fixes it; plain 'trl' is ambiguous
    argv = [f"{losses}:token_mean_loss", "-f", "policy_loss", "--max-examples", "10", "--preset"]
    assert cli.run(_parse([*argv, "trl:dapo"])) == 0
    assert "agg='token-mean'" in capsys.readouterr().out
    assert cli.run(_parse([*argv, "trl"])) == 2
    assert "preset 'trl' is ambiguous for policy_loss" in capsys.readouterr().err


@pytest.mark.parametrize("width", [80])
def test_the_note_column_wraps_at_spaces_and_keeps_brackets(
    losses: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    cli.run(_parse([f"{losses}:token_mean_loss", "-f", "policy_loss", "--max-examples", "10"]))
    out = capsys.readouterr().out
    title, _, rest = out.partition("┏")
    table = [line for line in ("┏" + rest).splitlines() if line[:1] in "┏┃┡│└"]
    assert max(len(line) for line in table) <= width  # nothing cut at the terminal's edge
    assert "[float64;" in title  # the title's bracket is text, not rich markup
    notes = " ".join(line.rsplit("│", 2)[-2].strip() for line in table if line.startswith("│"))
    # every token of the diagnosis is whole in the wrapped column (no word split across lines)
    for token in ("agg='seq-mean-token-mean',", "clip_eps_high=None,", "agg='token-mean'."):
        assert token in notes.split(), (token, notes)
