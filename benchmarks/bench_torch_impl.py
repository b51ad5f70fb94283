"""Side-by-side timings of torch_impl against baselines in the same run, reported as ratios.

(The log-probabilities and entropy are benchmarked against TRL, verl and OpenRLHF in ``bench_logprobs.py``.)

Baselines:
- ``gae`` (blockwise, vectorised over the batch) vs a per-token reverse loop in torch (the form of TRL, verl and
  OpenRLHF) and vs the NumPy reference;
- ``policy_loss`` vs the NumPy reference (what the oracle-in-the-loop costs).

Usage:  python benchmarks/bench_torch_impl.py [--device cuda] [--quick]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import numpy as np
import torch
from torch.utils import benchmark

from rlhf_oracle import reference as ref
from rlhf_oracle import torch_impl as ti
from rlhf_oracle.torch_impl.advantages import _gae_loop


def time_it(fn: Callable[[], object], min_run_time: float) -> float:
    """Median seconds per call."""
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and shorter timing runs")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    dev = args.device
    run_time = 0.2 if args.quick else 1.0
    rows: list[dict[str, object]] = []

    def sync() -> None:
        if dev == "cuda":
            torch.cuda.synchronize()

    # ---- GAE: blockwise vs per-token loop vs NumPy reference
    for length in (256, 2048) if args.quick else (256, 2048, 8192):
        bsz = 16
        rewards = torch.randn(bsz, length, device=dev)
        values = torch.randn(bsz, length, device=dev)
        mask = torch.rand(bsz, length, device=dev) > 0.1
        ours = time_it(lambda: (ti.gae(rewards, values, mask, 1.0, 0.95), sync()), run_time)
        loop = time_it(lambda: (_gae_loop(rewards, values, mask, 1.0, 0.95), sync()), run_time)
        r_np, v_np, m_np = (x.double().cpu().numpy() for x in (rewards, values, mask))
        reference = time_it(lambda: ref.gae(r_np, v_np, m_np, 1.0, 0.95), run_time) if length <= 2048 else float("nan")
        rows.append({
            "case": "torch_impl.gae vs per-token loop (and NumPy reference)", "shape": f"[{bsz},{length}] float32",
            "ours_ms": 1e3 * ours, "baseline_ms": 1e3 * loop, "time_ratio": ours / loop,
            "reference_ms": 1e3 * reference,
        })  # fmt: skip

    # ---- policy loss: torch vs NumPy reference (the oracle's cost)
    bsz, length = 64, 512
    logp = -torch.rand(bsz, length, device=dev) * 3
    logp_old = logp + 0.1 * torch.randn(bsz, length, device=dev)
    adv = torch.randn(bsz, length, device=dev)
    mask = torch.rand(bsz, length, device=dev) > 0.2
    ours = time_it(lambda: (ti.policy_loss(logp, logp_old, adv, mask), sync()), run_time)
    arrays = [x.double().cpu().numpy() for x in (logp, logp_old, adv, mask)]
    reference = time_it(lambda: ref.policy_loss(*arrays), run_time)
    rows.append({
        "case": "torch_impl.policy_loss vs NumPy reference", "shape": f"[{bsz},{length}] float32",
        "ours_ms": 1e3 * ours, "baseline_ms": 1e3 * reference, "time_ratio": ours / reference,
    })  # fmt: skip

    name = torch.cuda.get_device_name() if dev == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}\n")
    print("| case | shape | ours ms | baseline ms | time ratio |")
    print("|---|---|---|---|---|")
    for row in rows:

        def f(key: str, fmt: str = ".2f", row=row) -> str:
            return format(row[key], fmt) if key in row else "-"

        print(f"| {row['case']} | {row['shape']} | {f('ours_ms')} | {f('baseline_ms')} | {f('time_ratio', '.3f')} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": name, "rows": rows}, fh, indent=2, default=float)
    _ = np  # numpy is imported for the reference's arrays


if __name__ == "__main__":
    main()
