"""The default demo learns: PPO raises the hidden GOLD reward well above pi_SFT while KL stays bounded.

Runs the default ``rlhf-oracle demo`` configuration for seeds 0, 1, 2, each with a second PPO phase at beta = 0
from the same SFT policy and reward model (``--betas 0.1,0``: the beta = 0.1 phase is exactly the default demo).
About 100 s per seed on one CPU core; ~5-6 minutes in all.

Measured (CPU, 1 thread; held-out evaluation on 256 fixed prompts, gold = count of the prompt's first letter):

=====  =========  ====================  ===================  ========
seed   pi_SFT     PPO beta0=0.1         PPO beta0=0          RM acc.
=====  =========  ====================  ===================  ========
0      1.69       5.57 (KL 5.7 nats)    5.20 (KL 14.7)       97.4%
1      1.61       4.72 (KL 8.5 nats)    3.79 (KL 13.3)       93.0%
2      1.88       5.02 (KL 7.6 nats)    3.10 (KL 21.8)       90.6%
=====  =========  ====================  ===================  ========

Gold gain of the beta0=0.1 policy: +3.88, +3.11, +3.15 (mean +3.38, std 0.43); final KL 5.7 / 8.5 / 7.6 nats.

Margins asserted, from those runs (about 1 point of slack under the smallest gain, on a 1.3-std scale):
- every seed: gold(PPO, beta0=0.1) - gold(pi_SFT) >= 2.0 (pi_SFT's gold has std ~1.3 over prompts);
- mean over seeds of that improvement >= 2.5;
- KL(pi || pi_SFT) of the beta0=0.1 policy <= 12 nats = 2 x the adaptive target (6 nats);
- beta = 0 (no KL penalty): KL is larger than with beta0=0.1 for every seed (robust: ~14 vs ~6 nats).
  Its gold reward is recorded, not asserted: it came out LOWER than with the penalty on every measured seed while its
  proxy (RM) reward came out higher, the reward over-optimisation the KL penalty exists to prevent (Gao et al. 2022),
  but a 3-seed sign is not a robust assertion.
- the oracle never exceeded its tolerance (the run would have stopped).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rlhf_oracle.e2e.config import DemoConfig
from rlhf_oracle.e2e.run import run_demo

SEEDS = (0, 1, 2)
MIN_GAIN_PER_SEED = 2.0
MIN_MEAN_GAIN = 2.5
MAX_KL = 12.0


@pytest.mark.slow
def test_default_demo_improves_gold_reward_over_sft_for_three_seeds(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = []
    for seed in SEEDS:
        cfg = DemoConfig(seed=seed, betas=(DemoConfig().beta, 0.0))
        summary = run_demo(cfg, tmp_path / f"seed{seed}", progress=False)
        with_kl, no_kl = summary["phases"]
        rows.append(
            {
                "seed": seed,
                "gold_sft": summary["sft"]["gold"],
                "gold_ppo": with_kl["gold_after"],
                "kl_ppo": with_kl["kl_final"],
                "proxy_ppo": with_kl["proxy_after"],
                "gold_beta0": no_kl["gold_after"],
                "kl_beta0": no_kl["kl_final"],
                "proxy_beta0": no_kl["proxy_after"],
                "rm_accuracy": summary["reward_model"]["rm_accuracy"],
                "oracle_max": summary["max_oracle_discrepancy"],
                "wall_s": summary["wall_time_s"],
            }
        )
    print(json.dumps(rows, indent=1))  # recorded numbers (pytest -s shows them)
    gains = [r["gold_ppo"] - r["gold_sft"] for r in rows]
    for r, gain in zip(rows, gains, strict=True):
        assert gain >= MIN_GAIN_PER_SEED, r
        assert r["kl_ppo"] <= MAX_KL, r
        assert r["kl_beta0"] > r["kl_ppo"], r
        assert r["oracle_max"] <= DemoConfig().oracle_rtol, r
    assert sum(gains) / len(gains) >= MIN_MEAN_GAIN, rows
