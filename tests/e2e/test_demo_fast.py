"""The whole pipeline, shrunk to seconds: it integrates, the oracle agrees, checkpoints resume exactly.

One uninterrupted run and one run killed after PPO step 3 (checkpoints every 2 steps, so step 3 is replayed from
the step-2 checkpoint) then resumed through the CLI; both must write byte-identical metrics.jsonl and summaries.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from rlhf_oracle.cli import EXIT_HALTED, main


def _demo(out: Path, cfg: dict[str, Any], *extra: str) -> int:
    config = out.parent / f"{out.name}.json"
    config.write_text(json.dumps(cfg))
    return main(["demo", "--quiet", "--out", str(out), "--config", str(config), *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny: dict[str, Any]) -> tuple[Path, Path]:
    cfg = {**tiny, "betas": [0.1, 0.0]}
    root = tmp_path_factory.mktemp("demo")
    full, killed = root / "full", root / "killed"
    assert _demo(full, cfg) == 0
    assert _demo(killed, cfg, "--halt-after-step", "3") == EXIT_HALTED
    phase = killed / "ppo_beta0.1"
    assert [p.name for p in sorted((phase / "checkpoints").glob("*.pt"))] == ["step_000002.pt"]
    assert len((phase / "metrics.jsonl").read_text().splitlines()) == 3  # step 3 ran, its checkpoint did not
    assert not (killed / "ppo_beta0").exists()  # the second phase had not started
    assert main(["demo", "--quiet", "--resume", str(killed)]) == 0
    return full, killed


def test_losses_finite_and_oracle_within_tolerance(runs: tuple[Path, Path]) -> None:
    full, _ = runs
    metrics = [json.loads(line) for line in (full / "ppo_beta0.1" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 7))
    for m in metrics:
        for key in ("policy_loss", "value_loss", "entropy", "ptx_loss", "kl", "gold", "proxy", "reward", "beta"):
            assert math.isfinite(m[key]), (m["step"], key)
        assert m["oracle"].keys() >= {
            "kl_shaped_rewards",
            "gae",
            "policy_loss",
            "value_loss",
            "kl_estimate",
            "ptx_loss",
        }
        assert m["oracle_max"] <= 1e-4
    summary = json.loads((full / "summary.json").read_text())
    assert summary["max_oracle_discrepancy"] <= summary["oracle_rtol"]
    assert 0.0 <= summary["reward_model"]["rm_accuracy"] <= 1.0
    assert summary["phases"][0]["oracle_checked_steps"] == 6


def test_run_folder_has_config_checkpoints_models_and_plots(runs: tuple[Path, Path]) -> None:
    full, _ = runs
    for rel in (
        "config.json",
        "summary.json",
        "tokenizer/tokenizer.json",
        "sft/config.json",
        "rm/model.pt",
        "rm/metrics.json",
        "ppo_beta0.1/metrics.jsonl",
        "ppo_beta0.1/summary.json",
        "ppo_beta0.1/policy/config.json",
        "plots/reward_kl.png",
        "plots/gold_vs_proxy.png",
        "plots/frontier.png",
        "ppo_beta0/metrics.jsonl",
    ):
        assert (full / rel).is_file(), rel
    ckpts = sorted((full / "ppo_beta0.1" / "checkpoints").glob("*.pt"))
    assert [p.name for p in ckpts] == ["step_000004.pt", "step_000006.pt"]  # keep_checkpoints = 2
    import torch

    payload = torch.load(ckpts[-1], weights_only=False)
    assert payload.keys() >= {"step", "policy", "critic", "policy_opt", "critic_opt", "kl_ctl", "rng", "beta"}
    assert payload["step"] == 6
    assert (full / "plots" / "reward_kl.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("phase", ["ppo_beta0.1", "ppo_beta0"])
def test_resume_reproduces_the_uninterrupted_run_exactly(runs: tuple[Path, Path], phase: str) -> None:
    full, killed = runs
    a = (full / phase / "metrics.jsonl").read_text()
    b = (killed / phase / "metrics.jsonl").read_text()
    assert a == b
    sa = json.loads((full / phase / "summary.json").read_text())
    sb = json.loads((killed / phase / "summary.json").read_text())
    assert sa == sb


def test_beta_zero_phase_has_no_kl_penalty(runs: tuple[Path, Path]) -> None:
    full, _ = runs
    metrics = [json.loads(line) for line in (full / "ppo_beta0" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["beta"] == 0.0 for m in metrics)  # the adaptive controller is multiplicative: 0 stays 0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tiny_demo_on_cuda(tmp_path: Path, tiny: dict[str, Any], dtype: str) -> None:
    """--device cuda (and bf16 autocast): the oracle still agrees, since the formulas get float32 inputs."""
    cfg = {**tiny, "device": "cuda", "dtype": dtype, "ppo_steps": 3}
    assert _demo(tmp_path / "run", cfg) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["device"].startswith("cuda")
    assert summary["max_oracle_discrepancy"] <= summary["oracle_rtol"]
    assert main(["demo", "--quiet", "--resume", str(tmp_path / "run")]) == 0  # resume loads CPU RNG states


def test_the_demo_leaves_process_wide_torch_settings_as_it_found_them() -> None:
    """flush-denormal, threads and determinism are restored: a test suite or notebook must not inherit them."""
    import torch

    from rlhf_oracle.e2e.config import DemoConfig
    from rlhf_oracle.e2e.runtime import torch_settings

    threads = torch.get_num_threads()
    with torch_settings(DemoConfig(), torch.device("cpu")):
        assert torch.tensor([1e-310], dtype=torch.float64).item() == 0.0  # flushed inside
    assert torch.tensor([1e-310], dtype=torch.float64).item() == 1e-310
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_phase_does_not_depend_on_the_other_betas_in_the_list(
    runs: tuple[Path, Path], tmp_path: Path, tiny: dict[str, Any]
) -> None:
    """The 0.1 phase of ``--betas 0.1,0`` (the fixture's full run) and of ``--betas 0.1`` alone, and the 0 phase of
    ``--betas 0.1,0`` and of ``--betas 0`` alone: byte-identical metrics (each phase is seeded from its own beta)."""
    full, _ = runs
    for beta, name in ((0.0, "ppo_beta0"), (0.1, "ppo_beta0.1")):
        alone = tmp_path / f"alone_{name}"
        assert _demo(alone, {**tiny, "betas": [beta]}) == 0
        assert (alone / name / "metrics.jsonl").read_text() == (full / name / "metrics.jsonl").read_text(), name
