"""The demo under ``torchrun --nproc-per-node 2`` (gloo, loopback) gives the metrics of one process: the PPO update
is data-parallel with the global normalisers, everything else is computed identically on both ranks.

Equal up to float32 summation order (the ranks' gradients are summed by an all-reduce): 1e-6 relative on this
machine, 1e-4 allowed; the sampled replies, and so the gold score, reply lengths and EOS rates, are identical.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from .conftest import TINY

pytestmark = pytest.mark.slow


def _cli(tmp: Path, out: str, world: int) -> Path:
    config = tmp / "tiny.json"
    config.write_text(json.dumps({**TINY, "ppo_steps": 3}))
    exe = Path(sys.executable).parent
    cli = str(exe / "rlhf-oracle")
    if world == 1:
        cmd = [cli, "demo"]
    else:
        torchrun = shutil.which("torchrun", path=str(exe)) or "torchrun"
        cmd = [torchrun, "--standalone", f"--nproc-per-node={world}", cli, "demo"]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([*cmd, "--config", str(config), "--out", str(tmp / out), "--quiet"], capture_output=True,
                          text=True, timeout=600, env=env, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / out


def _metrics(run: Path) -> list[dict[str, Any]]:
    (phase,) = sorted(run.glob("ppo_beta*"))
    return [json.loads(line) for line in (phase / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_ranks_give_the_metrics_of_one_process(tmp_path: Path) -> None:
    one = _cli(tmp_path, "one", 1)
    two = _cli(tmp_path, "two", 2)
    assert (two / ".rank1" / "summary.json").exists()  # rank 1 kept its files aside
    a, b = _metrics(one), _metrics(two)
    assert len(a) == len(b) == 3
    exact = ("step", "beta", "gold", "proxy", "reply_len", "eos_rate")  # the sampled replies are the same
    close = ("kl", "kl_token", "reward", "policy_loss", "value_loss", "entropy", "ptx_loss", "clipfrac", "approx_kl",
             "explained_var")  # fmt: skip
    for x, y in zip(a, b, strict=True):
        for key in exact:
            assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-9), (key, x[key], y[key])
        for key in close:
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-7), (key, x[key], y[key])
        assert y["oracle_max"] < 1e-4  # the in-loop oracle replayed the rollout and diagnostics calls on each rank
    sa, sb = (json.loads((run / "summary.json").read_text()) for run in (one, two))
    for key in ("gold_after", "proxy_after", "reply_len_after"):
        assert sa["phases"][0][key] == sb["phases"][0][key], key
    assert sa["phases"][0]["kl_final"] == pytest.approx(sb["phases"][0]["kl_final"], rel=1e-4)
