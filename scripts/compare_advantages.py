"""Run the demo once per advantage estimator and print the README's side-by-side table (``make demo-advantages``).

Each run is ``rlhf-oracle demo --advantage <name>`` on the built-in defaults (same seed, so the same SFT policy and
reward model), in ``runs/advantages/<name>/``; the table reads each run's ``summary.json``: the held-out gold and
proxy reward after PPO, the final KL to pi_SFT, the in-loop oracle's largest discrepancy and the wall time.
Extra arguments are passed to every run (e.g. ``--ppo-steps 30``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rlhf_oracle.e2e.config import ADVANTAGES

ROOT = Path("runs/advantages")


def main(extra: list[str]) -> int:
    rows = []
    for name in ADVANTAGES:
        out = ROOT / name
        if (out / "summary.json").exists():
            print(f"{name}: reusing {out}", file=sys.stderr)
        else:
            cli = Path(sys.executable).parent / "rlhf-oracle"  # the entry point installed beside this interpreter
            cmd = [str(cli), "demo", "--quiet", "--advantage", name, "--out", str(out), *extra]
            print(f"{name}: rlhf-oracle {' '.join(cmd[1:])}", file=sys.stderr)
            if subprocess.run(cmd, check=False).returncode != 0:
                return 1
        summary = json.loads((out / "summary.json").read_text())
        phase = summary["phases"][0]
        flag = "(default: PPO with a critic, GAE)" if name == "gae" else f"`--advantage {name}`"
        rows.append(
            f"| {flag} | {phase['gold_after']:.2f} | {phase['proxy_after']:+.2f} | {phase['kl_final']:.2f} "
            f"| {summary['max_oracle_discrepancy']:.1e} | {summary['wall_time_s']:.0f} s |"
        )
    sft = summary["sft"]["gold"]
    print(f"from the same SFT policy (gold {sft:.2f}):\n")
    header = ("`rlhf-oracle demo ...`", "gold reward", "proxy (RM)", "KL (nats/reply)", "oracle max discrepancy",
              "wall time")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
