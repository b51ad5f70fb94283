"""Usage errors come before any search, in one line naming the option (issue 18): a check that never ran the
candidate must not read as a pass, and a hyper-parameter of the wrong type gets the contract's words."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf_oracle import reference as R
from rlhf_oracle import torch_impl as T
from rlhf_oracle.properties import run_check


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"max_examples": 0}, "'max_examples' must be an int >= 1"),
        ({"dtype": "float32"}, "'dtype' must be a floating torch.dtype"),
        ({"dtype": torch.int64}, "'dtype' must be a floating torch.dtype"),
        ({"adapter": "first"}, "'adapter' must be an adapter"),
        ({"device": "meta"}, "'device' must hold data"),
        ({"device": "not-a-device"}, "'device' is not a torch device"),
    ],
)
def test_checker_options_are_refused_by_name(options: dict[str, object], words: str) -> None:
    with pytest.raises((ValueError, TypeError), match=words):
        run_check("policy_loss", T.policy_loss, **options)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_is_a_usage_error() -> None:
    with pytest.raises(ValueError, match="'device' 'cuda' is not available here"):
        run_check("policy_loss", T.policy_loss, device="cuda")


def test_a_candidate_that_is_not_callable_is_refused() -> None:
    with pytest.raises(TypeError, match="the candidate must be callable"):
        run_check("policy_loss", 0.2)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["0.2", None, [0.2], np.array([0.2]), True])
def test_non_numeric_hyper_parameters_get_the_contract_message_in_both(value: object) -> None:
    x = np.zeros((1, 3))
    m = np.ones((1, 3), dtype=bool)
    for impl, conv in ((R, np.asarray), (T, torch.as_tensor)):
        with pytest.raises(ValueError, match=r"policy_loss: 'clip_eps' must be a number > 0, got "):
            impl.policy_loss(conv(x), conv(x), conv(x), conv(m), clip_eps=value)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"kl_shaped_rewards: 'beta' must be a number >= 0, got "):
            impl.kl_shaped_rewards(conv(np.zeros(1)), conv(x), conv(x), conv(m), value)  # type: ignore[arg-type]


def test_the_cli_says_a_bad_convention_in_one_line_with_exit_2(tmp_path: Path) -> None:
    target = tmp_path / "loss.py"
    target.write_text("from rlhf_oracle.torch_impl import policy_loss as loss\n")
    for extra, words in (
        (["--clip-eps", "abc"], "'clip_eps' must be a number > 0, got 'abc'"),
        (["--device", "meta"], "'device' must hold data"),
    ):
        cli = str(Path(sys.executable).parent / "rlhf-oracle")
        cmd = [cli, "check", f"{target}:loss", "-f", "policy_loss", *extra]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, (extra, out.stdout[-500:], out.stderr[-500:])
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and words in lines[0], out.stderr


def test_presets_fix_what_the_framework_audit_documents() -> None:
    from rlhf_oracle.properties.presets import preset_conventions

    assert preset_conventions("policy_loss", "verl") == {"dual_clip": 3.0}
    assert preset_conventions("policy_loss", "trl:dapo") == {"agg": "token-mean", "dual_clip": None}
    assert preset_conventions("kl_estimate", "openrlhf:(k3)") == {"kind": "k3", "output_clamp": 10.0}
    with pytest.raises(ValueError, match=r"preset 'trl' is ambiguous for policy_loss, the trl functions differ"):
        preset_conventions("policy_loss", "trl")
    with pytest.raises(ValueError, match=r"'preset' must be one of \['openrlhf', 'trl', 'verl'\]"):
        preset_conventions("policy_loss", "deepspeed")
    with pytest.raises(ValueError, match=r"preset 'openrlhf' has no openrlhf function for gae"):
        preset_conventions("gae", "openrlhf")


def test_a_preset_and_an_explicit_convention_in_a_check() -> None:
    report = run_check("policy_loss", T.policy_loss, preset="trl:dapo", clip_eps=0.1, max_examples=5,
                       properties=["values"])  # fmt: skip
    assert report.passed and report.conventions == {"agg": "token-mean", "dual_clip": None, "clip_eps": 0.1}
