"""Side-by-side timings (and peak memory) of torch_impl against baselines in the same run, reported as ratios.

Baselines:
- ``token_logprobs`` / ``entropy_from_logits`` vs the naive ``log_softmax(logits.float()).gather`` that
  materialises a full [B, T, V] float32 tensor (DeepSpeed-Chat's form), forward + backward;
- ``gae`` (blockwise, vectorised over the batch) vs a per-token reverse loop in torch (the form of TRL, verl and
  OpenRLHF) and vs the NumPy reference;
- ``policy_loss`` vs the NumPy reference (what the oracle-in-the-loop costs).

Usage:  python benchmarks/bench_torch_impl.py [--device cuda] [--quick]
Peak memory: CUDA uses ``torch.cuda.max_memory_allocated``; on CPU each variant runs in a fresh subprocess and
reports its peak resident set growth (VmHWM after a reset through /proc/self/clear_refs, Linux only), which
includes torch's allocations.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import torch
from torch.utils import benchmark

from rlhf_oracle import reference as ref
from rlhf_oracle import torch_impl as ti
from rlhf_oracle.torch_impl.advantages import _gae_loop


def naive_token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def naive_entropy(logits: torch.Tensor) -> torch.Tensor:
    z = logits.float()
    p = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(-1)


def time_it(fn: Callable[[], object], min_run_time: float) -> float:
    """Median seconds per call."""
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def logits_case(device: str, dtype: torch.dtype, b: int, t: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)
    logits = (torch.randn(b, t, vocab, generator=g) * 3).to(device=device, dtype=dtype).requires_grad_(True)
    tokens = torch.randint(0, vocab, (b, t), generator=g).to(device)
    return logits, tokens


LOGPROB_VARIANTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "torch_impl.token_logprobs": lambda z, o: ti.token_logprobs(z, o),
    "naive log_softmax+gather": naive_token_logprobs,
    "torch_impl.entropy_from_logits": lambda z, o: ti.entropy_from_logits(z),
    "naive softmax entropy": lambda z, o: naive_entropy(z),
}


def peak_memory_child(variant: str, device: str, dtype: str, b: int, t: int, vocab: int) -> int:
    """Peak bytes above the input for one forward + backward of ``variant``."""
    logits, tokens = logits_case(device, getattr(torch, dtype), b, t, vocab)
    fn = LOGPROB_VARIANTS[variant]
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(logits, tokens).float().sum().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # Linux: writing 5 to clear_refs resets the peak resident set (VmHWM) to the current RSS.
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _status_kib("VmRSS")
    fn(logits, tokens).float().sum().backward()
    return (_status_kib("VmHWM") - base) * 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory(variant: str, device: str, dtype: str, b: int, t: int, vocab: int) -> int:
    if device == "cuda":
        return peak_memory_child(variant, device, dtype, b, t, vocab)
    args = [sys.executable, __file__, "--child", variant, dtype, str(b), str(t), str(vocab)]
    return int(subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and shorter timing runs")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        variant, dtype, b, t, vocab = args.child
        print(peak_memory_child(variant, "cpu", dtype, int(b), int(t), int(vocab)))
        return

    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    dev = args.device
    run_time = 0.2 if args.quick else 1.0
    rows: list[dict[str, object]] = []

    def sync() -> None:
        if dev == "cuda":
            torch.cuda.synchronize()

    # ---- token log-probs and entropy: forward + backward, bf16 and float32 logits
    b, t, vocab = (2, 128, 8192) if args.quick else (4, 512, 32768)
    if dev == "cuda":
        b, t, vocab = 8, 2048, 32768
    for dtype in ("float32", "bfloat16"):
        logits, tokens = logits_case(dev, getattr(torch, dtype), b, t, vocab)
        for pair in (("torch_impl.token_logprobs", "naive log_softmax+gather"),
                     ("torch_impl.entropy_from_logits", "naive softmax entropy")):  # fmt: skip
            timings, memories = [], []
            for name in pair:
                fn = LOGPROB_VARIANTS[name]

                def step(fn=fn) -> None:
                    logits.grad = None
                    fn(logits, tokens).float().sum().backward()
                    sync()

                timings.append(time_it(step, run_time))
                memories.append(peak_memory(name, dev, dtype, b, t, vocab))
            rows.append({
                "case": f"{pair[0]} vs {pair[1]}", "shape": f"[{b},{t},{vocab}] {dtype}",
                "ours_ms": 1e3 * timings[0], "baseline_ms": 1e3 * timings[1], "time_ratio": timings[0] / timings[1],
                "ours_peak_MiB": memories[0] / 2**20, "baseline_peak_MiB": memories[1] / 2**20,
                "memory_ratio": memories[0] / max(memories[1], 1),
            })  # fmt: skip

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
    print("| case | shape | ours ms | baseline ms | time ratio | ours peak MiB | baseline peak MiB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:

        def f(key: str, fmt: str = ".2f", row=row) -> str:
            return format(row[key], fmt) if key in row else "-"

        print(
            f"| {row['case']} | {row['shape']} | {f('ours_ms')} | {f('baseline_ms')} | {f('time_ratio', '.3f')} | "
            f"{f('ours_peak_MiB', '.1f')} | {f('baseline_peak_MiB', '.1f')} | {f('memory_ratio', '.3f')} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": name, "rows": rows}, fh, indent=2, default=float)
    _ = np  # numpy is imported for the reference's arrays


if __name__ == "__main__":
    main()
