"""Token log-probabilities and entropy: torch_impl side by side with TRL, verl and OpenRLHF, in one run.

The peers' functions come from their pinned wheels, fetched at run time exactly as the framework audit does
(``pip download --no-deps`` into ``~/.cache/rlhf_oracle/wheels``; nothing of theirs is committed here):

- TRL 1.16.0 ``trl.trainer.utils``: ``selective_log_softmax``, ``entropy_from_logits``,
  ``selective_log_softmax_and_entropy`` (its fused call; without triton it is the two calls);
- verl 0.9.1 ``verl.utils.torch_functional``: ``logprobs_from_logits_v2``, ``entropy_from_logits``;
- OpenRLHF 0.11.2 ``openrlhf.models.utils``: ``log_probs_from_logits``, ``compute_entropy``.

For each dtype (float32, bfloat16) and operation (log-probs, entropy, both) every implementation is timed
forward only (``torch.no_grad``: the rollout and reference passes) and forward + backward (the training step),
interleaved over rounds, median of each. Time is reported as a ratio to the fastest peer (<= 1 means at least as
fast). Peak memory above the input is measured in a fresh subprocess per cell: on CPU the peak resident set
(VmHWM after a reset through ``/proc/self/clear_refs``, with a fixed glibc mmap threshold so freed temporaries go
back to the OS), on CUDA ``torch.cuda.max_memory_allocated``. The floor is what any implementation must hold:
the outputs, plus the gradient of the logits (input-sized) for forward + backward.

Usage::

    python benchmarks/bench_logprobs.py                  # CPU, [4, 512, 32000], writes nothing
    python benchmarks/bench_logprobs.py --gpu            # CUDA, [8, 2048, 128256] bf16 (the --gpu sizes)
    python benchmarks/bench_logprobs.py --json out.json --baseline benchmarks/baseline_cpu.json

``--baseline`` compares with a committed run and exits 1 if a ratio of ours to the fastest peer grew by more
than 20 % (ratios, not milliseconds, so that a slower or busier machine does not raise a false alarm).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf_oracle import torch_impl as ti
from rlhf_oracle.audit.fetch import AuditUnavailable, fetch
from rlhf_oracle.audit.frameworks import PINS
from rlhf_oracle.audit.loader import load

OPS = ("logprobs", "entropy", "both")
SLOWDOWN = 1.2
"""A ratio to the fastest peer more than 20 % above the baseline's is flagged."""

Impl = Callable[[torch.Tensor, torch.Tensor], Any]


@dataclass(frozen=True)
class Implementation:
    name: str
    ops: dict[str, Impl]


def ours() -> Implementation:
    return Implementation("torch_impl", {
        "logprobs": lambda z, o: ti.token_logprobs(z, o),
        "entropy": lambda z, o: ti.entropy_from_logits(z),
        "both": lambda z, o: ti.logprobs_and_entropy(z, o),
    })  # fmt: skip


def ours_separate() -> Implementation:
    """The two separate calls of torch_impl, the baseline of the fused call."""
    return Implementation("torch_impl (2 calls)", {
        "both": lambda z, o: (ti.token_logprobs(z, o), ti.entropy_from_logits(z)),
    })  # fmt: skip


def ours_eager() -> Implementation:
    """torch_impl with its compiled kernels off (the eager chunked path), the baseline of the compiled kernels."""

    def logprobs(z: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        with ti.compiled_kernels(False):
            return ti.token_logprobs(z, o)

    return Implementation("torch_impl (eager)", {"logprobs": logprobs})


def peers() -> list[Implementation]:
    """TRL, verl and OpenRLHF's functions, loaded from their pinned wheels (fetched if not cached)."""
    trl_root = fetch(*PINS["trl"])
    trl = load(
        trl_root / "trl/trainer/utils.py",
        ["selective_log_softmax", "entropy_from_logits", "selective_log_softmax_and_entropy"],
        {"is_triton_available": lambda: False, "_supports_trl_loss_kernel": lambda *a, **k: False,
         "_fused_logprob_entropy": None},
    )  # fmt: skip
    verl = load(fetch(*PINS["verl"]) / "verl/utils/torch_functional.py", ["logprobs_from_logits_v2",
                                                                          "entropy_from_logits"])  # fmt: skip
    orl = load(fetch(*PINS["openrlhf"]) / "openrlhf/models/utils.py", ["log_probs_from_logits", "compute_entropy"])
    return [
        Implementation(f"TRL {PINS['trl'][1]}", {
            "logprobs": trl.selective_log_softmax,
            "entropy": lambda z, o: trl.entropy_from_logits(z),
            "both": trl.selective_log_softmax_and_entropy,
        }),
        Implementation(f"verl {PINS['verl'][1]}", {
            "logprobs": verl.logprobs_from_logits_v2,
            "entropy": lambda z, o: verl.entropy_from_logits(z),
            "both": lambda z, o: (verl.logprobs_from_logits_v2(z, o), verl.entropy_from_logits(z)),
        }),
        Implementation(f"OpenRLHF {PINS['openrlhf'][1]}", {
            "logprobs": orl.log_probs_from_logits,
            "entropy": lambda z, o: orl.compute_entropy(z),
            "both": lambda z, o: (orl.log_probs_from_logits(z, o), orl.compute_entropy(z)),
        }),
    ]  # fmt: skip


def own() -> list[Implementation]:
    """torch_impl's own implementations: the default, the two separate calls, the compiled kernels off."""
    return [ours(), ours_separate(), ours_eager()]


def implementations() -> list[Implementation]:
    return [*own(), *peers()]


def make_case(device: str, dtype: torch.dtype, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    b, t, vocab = shape
    g = torch.Generator(device="cpu").manual_seed(0)
    logits = (torch.randn(b, t, vocab, generator=g) * 3).to(device=device, dtype=dtype)
    tokens = torch.randint(0, vocab, (b, t), generator=g).to(device)
    return logits, tokens


def _total(out: Any) -> torch.Tensor:
    """Sum of every output (a scalar to differentiate: each output gets a unit upstream gradient)."""
    outs = out if isinstance(out, tuple) else (out,)
    return sum((o.float().sum() for o in outs), torch.zeros((), device=outs[0].device))


def _step(fn: Impl, logits: torch.Tensor, tokens: torch.Tensor, backward: bool) -> None:
    if backward:
        logits.grad = None
        _total(fn(logits, tokens)).backward()
    else:
        with torch.no_grad():
            fn(logits, tokens)
    if logits.is_cuda:
        torch.cuda.synchronize()


def time_cells(
    impls: list[Implementation], op: str, logits: torch.Tensor, tokens: torch.Tensor, backward: bool,
    rounds: int, min_time: float,
) -> dict[str, float]:  # fmt: skip
    """Median seconds per call of each implementation, interleaved over ``rounds`` in a rotating order."""
    samples: dict[str, list[float]] = {impl.name: [] for impl in impls if op in impl.ops}
    x = logits.detach().requires_grad_(backward)
    for impl in impls:  # warm-up (first-call allocations, lazy loading)
        if op in impl.ops:
            _step(impl.ops[op], x, tokens, backward)
    present = [impl for impl in impls if op in impl.ops]
    for r in range(rounds):
        for impl in present[r % len(present) :] + present[: r % len(present)]:  # rotated: no fixed first place
            n, start = 0, time.perf_counter()
            while True:
                _step(impl.ops[op], x, tokens, backward)
                n += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_time:
                    break
            samples[impl.name].append(elapsed / n)
    return {name: statistics.median(s) for name, s in samples.items()}


# ---- peak memory, one fresh process per cell


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_here(impl: Implementation, op: str, device: str, dtype: str, shape: tuple[int, int, int],
                     backward: bool) -> int:  # fmt: skip
    """Peak bytes above the inputs for the second call of ``impl`` in this process (the first, a warm-up, takes the
    one-off allocations and, for torch_impl's forward-only bf16 log-probs, the compilation of its kernel)."""
    logits, tokens = make_case(device, getattr(torch, dtype), shape)
    x = logits.requires_grad_(backward)
    _step(impl.ops[op], x, tokens, backward)
    x.grad = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _step(impl.ops[op], x, tokens, backward)
        return torch.cuda.max_memory_allocated() - base
    with open("/proc/self/clear_refs", "w") as fh:  # resets VmHWM to the current resident set
        fh.write("5")
    base = _status_kib("VmRSS")
    _step(impl.ops[op], x, tokens, backward)
    return (_status_kib("VmHWM") - base) * 1024


def peak_memory(impl: str, op: str, device: str, dtype: str, shape: tuple[int, int, int], backward: bool) -> int:
    if device == "cuda":
        return peak_memory_here(_by_name(impl), op, device, dtype, shape, backward)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    args = [sys.executable, __file__, "--child", json.dumps([impl, op, dtype, list(shape), backward])]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed for {impl} {op}: {proc.stderr.strip()[-2000:]}")
    return int(proc.stdout.strip().splitlines()[-1])


def _by_name(name: str) -> Implementation:
    return next(impl for impl in implementations() if impl.name == name)


def memory_floor(op: str, dtype: torch.dtype, shape: tuple[int, int, int], backward: bool) -> int:
    """Bytes any implementation must allocate: its outputs (float32 at most) and, with backward, the gradient."""
    b, t, vocab = shape
    outputs = (2 if op == "both" else 1) * b * t * dtype.itemsize
    return outputs + (b * t * vocab * dtype.itemsize if backward else 0)


# ---- the run


def run(args: argparse.Namespace) -> dict[str, Any]:
    shape = tuple(int(s) for s in args.shape.split(","))
    assert len(shape) == 3, "--shape is B,T,V"
    impls = implementations()
    peer_names = [impl.name for impl in impls[len(own()) :]]
    rows: list[dict[str, Any]] = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        logits, tokens = make_case(args.device, dtype, shape)  # type: ignore[arg-type]
        for backward in (False, True):
            for op in OPS:
                times = time_cells(impls, op, logits, tokens, backward, args.rounds, args.min_time)
                row: dict[str, Any] = {
                    "dtype": dtype_name, "op": op, "mode": "fwd+bwd" if backward else "fwd",
                    "ms": {name: 1e3 * s for name, s in times.items()},
                }  # fmt: skip
                fastest = min(peer_names, key=lambda n: times[n])
                row["fastest_peer"] = fastest
                row["time_ratio"] = times["torch_impl"] / times[fastest]
                if op == "both":
                    row["fused_vs_separate"] = times["torch_impl"] / times["torch_impl (2 calls)"]
                if "torch_impl (eager)" in times:
                    row["default_vs_eager"] = times["torch_impl"] / times["torch_impl (eager)"]
                if args.memory:
                    mem = {name: peak_memory(name, op, args.device, dtype_name, shape, backward)  # type: ignore[arg-type]
                           for name in times}  # fmt: skip
                    row["peak_MiB"] = {name: m / 2**20 for name, m in mem.items()}
                    smallest = min(peer_names, key=lambda n: mem[n])
                    row["smallest_peer"] = smallest
                    row["memory_ratio"] = mem["torch_impl"] / max(mem[smallest], 1)
                    row["floor_MiB"] = memory_floor(op, dtype, shape, backward) / 2**20  # type: ignore[arg-type]
                rows.append(row)
                print(_line(row), flush=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or 'CPU'}"
    return {
        "device": device, "threads": torch.get_num_threads(), "torch": torch.__version__, "shape": list(shape),
        "peers": peer_names, "rows": rows,
    }  # fmt: skip


def _line(row: dict[str, Any]) -> str:
    text = f"{row['dtype']:>8} {row['op']:>8} {row['mode']:>7}: ours/fastest peer {row['time_ratio']:.2f}"
    if "memory_ratio" in row:
        text += f", memory ours/smallest peer {row['memory_ratio']:.2f}"
    return text


def table(result: dict[str, Any]) -> str:
    """The Markdown table of RESULTS.md: one row per cell, times in ms and peak extra memory in MiB."""
    names = [*(impl.name for impl in own()), *result["peers"]]
    head = "| dtype | op | mode | " + " | ".join(f"{n} ms" for n in names) + " | ours / fastest peer |"
    has_memory = "peak_MiB" in result["rows"][0]
    if has_memory:
        head += " ours MiB | smallest peer MiB | ours / smallest peer | floor MiB |"
    lines = [head, "|" + "---|" * head.count(" | ")]
    for row in result["rows"]:
        cells = [row["dtype"], row["op"], row["mode"]]
        cells += [f"{row['ms'][n]:.1f}" if n in row["ms"] else "-" for n in names]
        cells.append(f"**{row['time_ratio']:.2f}**")
        if has_memory:
            peak = row["peak_MiB"]
            cells += [f"{peak['torch_impl']:.1f}", f"{peak[row['smallest_peer']]:.1f} ({row['smallest_peer']})",
                      f"**{row['memory_ratio']:.2f}**", f"{row['floor_MiB']:.1f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    fused = [r for r in result["rows"] if "fused_vs_separate" in r]
    lines.append("")
    lines.append("Fused `logprobs_and_entropy` / the two separate calls: " + ", ".join(
        f"{r['dtype']} {r['mode']} {r['fused_vs_separate']:.2f}" for r in fused) + ".")  # fmt: skip
    compiled = [r for r in result["rows"] if "default_vs_eager" in r]
    if compiled:
        lines.append("")
        lines.append("Log-probs, torch_impl (compiled kernels where they apply) / torch_impl (eager): " + ", ".join(
            f"{r['dtype']} {r['mode']} {r['default_vs_eager']:.2f}" for r in compiled) + ".")  # fmt: skip
    return "\n".join(lines)


def compare(result: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """Cells whose ratio to the fastest peer grew by more than :data:`SLOWDOWN` over the baseline's."""
    old = {(r["dtype"], r["op"], r["mode"]): r for r in baseline["rows"]}
    flagged = []
    for row in result["rows"]:
        key = (row["dtype"], row["op"], row["mode"])
        if key in old and row["time_ratio"] > SLOWDOWN * old[key]["time_ratio"]:
            flagged.append(f"{' '.join(key)}: ours/fastest peer {row['time_ratio']:.2f}, baseline "
                           f"{old[key]['time_ratio']:.2f} (> {SLOWDOWN:.1f}x)")  # fmt: skip
    return flagged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true", help="CUDA, bf16 [8, 2048, 128256] unless --shape is given")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda with --gpu, else cpu)")
    parser.add_argument("--shape", default=None, help="B,T,V (default 4,512,32000; 8,2048,128256 with --gpu)")
    parser.add_argument("--dtypes", default=None, help="comma-separated (default float32,bfloat16; bf16 with --gpu)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median)")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per implementation per round")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory columns")
    parser.add_argument("--json", help="write the run to this JSON file")
    parser.add_argument("--markdown", help="write the table to this Markdown file")
    parser.add_argument("--baseline", help="a committed JSON run: exit 1 if a time ratio grew by more than 20 %%")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        impl, op, dtype, shape, backward = json.loads(args.child)
        print(peak_memory_here(_by_name(impl), op, "cpu", dtype, tuple(shape), backward))
        return 0
    args.device = args.device or ("cuda" if args.gpu else "cpu")
    args.shape = args.shape or ("8,2048,128256" if args.gpu else "4,512,32000")
    args.dtypes = args.dtypes or ("bfloat16" if args.gpu else "float32,bfloat16")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--gpu/--device cuda: CUDA is not available on this machine")
    try:
        result = run(args)
    except AuditUnavailable as exc:
        print(f"cannot fetch the peers' wheels: {exc}", file=sys.stderr)
        return 2
    text = table(result)
    print(f"\n{result['device']}, {result['threads']} threads, torch {result['torch']}, shape {result['shape']}\n")
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.baseline:
        flagged = compare(result, json.loads(Path(args.baseline).read_text()))
        for line in flagged:
            print(f"SLOWDOWN {line}")
        if flagged:
            return 1
        print(f"no time ratio more than {SLOWDOWN:.1f}x its baseline ({args.baseline})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
