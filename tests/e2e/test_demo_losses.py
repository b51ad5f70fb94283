"""The demo's GRPO-era options on the tiny pipeline: each policy loss, the KL loss term and rollout correction
with a real bf16 mismatch run, stay finite, and every new call is replayed by the in-loop oracle in float64."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from rlhf_oracle.cli import main


@pytest.mark.parametrize(
    ("options", "replayed"),
    [
        ({"policy_loss": "cispo"}, "cispo_loss"),
        ({"policy_loss": "gspo"}, "gspo_loss"),
        ({"policy_loss": "sapo", "kl_loss_coef": 0.05, "kl_kind": "k3"}, "kl_loss"),
        ({"policy_loss": "pg", "rollout_correction": "tis"}, "rollout_is_weights"),
    ],
    ids=["cispo", "gspo", "sapo+kl_loss", "pg+tis"],
)
def test_policy_loss_options_run_under_the_oracle(
    tmp_path: Path, tiny: dict[str, Any], options: dict[str, Any], replayed: str
) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({**tiny, "ppo_steps": 2, "save_every": 5, **options}))
    assert main(["demo", "--quiet", "--out", str(tmp_path / "run"), "--config", str(config)]) == 0
    metrics = [json.loads(x) for x in (tmp_path / "run" / "ppo_beta0.1" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2
    for m in metrics:
        assert all(math.isfinite(m[k]) for k in ("policy_loss", "kl", "gold", "reward"))
        assert replayed in m["oracle"], sorted(m["oracle"])
        assert m["oracle_max"] <= 1e-4
    if "rollout_correction" in options:  # a real mismatch: the bf16 engine's log-probs differ from the trainer's
        assert metrics[0]["oracle"]["rollout_is_weights"] <= 1e-4


def test_rollout_correction_needs_a_weighted_loss(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--policy-loss", "cispo", "--rollout-correction", "tis"]) == 2
    assert "'rollout_correction' must be None unless policy_loss is 'ppo' or 'pg'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "replayed"),
    [
        ({"advantage": "grpo", "overlong_buffer": 3, "dynamic_sampling": True}, "dynamic_sampling_mask"),
        ({"advantage": "rloo", "samples_per_prompt": 2}, "rloo_advantages"),
        ({"advantage": "reinforce++"}, "reinforce_pp_advantages"),
        ({"advantage": "reinforce++-baseline"}, "reinforce_pp_baseline_advantages"),
        ({"advantage": "remax"}, "remax_advantages"),
    ],
    ids=["grpo+overlong+dynamic", "rloo", "reinforce++", "reinforce++-baseline", "remax"],
)
def test_critic_free_advantages_run_under_the_oracle(
    tmp_path: Path, tiny: dict[str, Any], options: dict[str, Any], replayed: str
) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({**tiny, "ppo_steps": 2, "save_every": 5, **options}))
    assert main(["demo", "--quiet", "--out", str(tmp_path / "run"), "--config", str(config)]) == 0
    metrics = [json.loads(x) for x in (tmp_path / "run" / "ppo_beta0.1" / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:
        assert all(math.isfinite(m[k]) for k in ("policy_loss", "kl", "gold", "reward"))
        assert m["value_loss"] is None and m["explained_var"] is None  # no critic
        assert replayed in m["oracle"], sorted(m["oracle"])
        assert m["oracle_max"] <= 1e-4
        if options.get("dynamic_sampling"):
            assert 0.0 <= m["kept"] <= 1.0 and "overlong_penalty" in m["oracle"]


def test_group_estimators_need_whole_groups(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--advantage", "rloo", "--samples-per-prompt", "5"]) == 2
    assert "'rollout_batch_size' must be a multiple of samples_per_prompt" in capsys.readouterr().err
    assert main(["demo", "--advantage", "remax", "--dynamic-sampling"]) == 2
    assert "'dynamic_sampling' must be False unless advantage is one of" in capsys.readouterr().err
