"""Memory discipline of token_logprobs / entropy_from_logits: no second [B, T, V] tensor, no float32 upcast.

Three measurements:

1. a dispatch-level spy (``TorchDispatchMode``) that records every tensor storage allocated by the aten ops of a
   forward + backward pass: the largest float32 one must be one [B, chunk, V] slice, and the only full-size
   allocation must be the gradient itself (backward), none in the forward;
2. peak RSS of a subprocess (VmHWM after a reset) on a large bf16 input, forward only: the compiled kernel and
   the eager chunked path vs a naive ``log_softmax(logits.float())``;
3. on CUDA, ``torch.cuda.max_memory_allocated`` (marked ``gpu``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rlhf_oracle import torch_impl as ti
from rlhf_oracle.torch_impl.logprobs import CHUNK_ELEMENTS, _chunk_length


class _AllocationSpy(TorchDispatchMode):
    """Records (nbytes, dtype) of every new storage returned by an aten op."""

    def __init__(self, known: list[torch.Tensor]) -> None:
        super().__init__()
        self.known = {t.untyped_storage().data_ptr() for t in known}
        self.allocations: list[tuple[int, torch.dtype]] = []

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.known:
                self.known.add(t.untyped_storage().data_ptr())
                self.allocations.append((t.untyped_storage().nbytes(), t.dtype))
        return out


def _spy(fn: Callable[[], Any], known: list[torch.Tensor]) -> list[tuple[int, torch.dtype]]:
    with _AllocationSpy(known) as spy:
        fn()
    return spy.allocations


@pytest.mark.parametrize("which", ["token_logprobs", "entropy_from_logits", "logprobs_and_entropy"])
def test_largest_temporary_is_one_chunk(which: str) -> None:
    b, t, v, chunk = 2, 64, 500, 8
    logits = torch.randn(b, t, v, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16).requires_grad_(True)
    tokens = torch.randint(0, v, (b, t), generator=torch.Generator().manual_seed(1))
    full_bf16 = b * t * v * 2
    chunk_f32 = chunk * v * 4  # one chunk: `chunk` rows of the flattened [B * T, V]

    def forward() -> torch.Tensor:
        if which == "token_logprobs":
            return ti.token_logprobs(logits, tokens, chunk_size=chunk)
        if which == "logprobs_and_entropy":
            lp, h = ti.logprobs_and_entropy(logits, tokens, chunk_size=chunk)
            return lp + h
        return ti.entropy_from_logits(logits, chunk_size=chunk)

    holder: list[torch.Tensor] = []
    fwd = _spy(lambda: holder.append(forward()), [logits, tokens])
    assert max(n for n, d in fwd if d == torch.float32) <= chunk_f32
    assert max(n for n, _ in fwd) <= chunk_f32  # nothing full-size at all in the forward
    assert sum(n == chunk_f32 for n, _ in fwd) <= 2  # the chunk buffers are allocated once and reused
    out = holder[0]
    bwd = _spy(lambda: out.sum().backward(), [logits, tokens, out])
    float32_sizes = [n for n, d in bwd if d == torch.float32]
    assert max(float32_sizes) <= chunk_f32
    full_size = [(n, d) for n, d in bwd if n >= full_bf16]
    assert full_size == [(full_bf16, torch.bfloat16)]  # the gradient, in the input dtype, and nothing else
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16
    assert sum(n == chunk_f32 for n, _ in bwd) <= 2


def test_float32_backward_writes_into_the_gradient() -> None:
    """float32 logits: the gradient is the only full-size allocation and one chunk buffer the only other large one."""
    b, t, v, chunk = 2, 64, 500, 8
    logits = torch.randn(b, t, v, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    tokens = torch.randint(0, v, (b, t), generator=torch.Generator().manual_seed(3))
    lp, h = ti.logprobs_and_entropy(logits, tokens, chunk_size=chunk)
    out = lp + h
    bwd = _spy(lambda: out.sum().backward(), [logits, tokens, out, lp, h])
    large = sorted(n for n, _ in bwd if n >= chunk * v * 4)
    assert large == [chunk * v * 4, b * t * v * 4], large


def test_default_chunk_holds_about_chunk_elements() -> None:
    logits = torch.empty(4, 4096, 32000, dtype=torch.bfloat16, device="meta")
    chunk = _chunk_length(logits, None)
    assert chunk == CHUNK_ELEMENTS // 32000 and chunk * 32000 <= CHUNK_ELEMENTS  # rows of the flattened [B*T, V]
    assert _chunk_length(torch.empty(1, 3, 10**8, device="meta"), None) == 1  # a single huge row: one position


_RSS_SCRIPT = """
import json, sys, torch
from rlhf_oracle import torch_impl as ti
torch.set_num_threads(2)
b, t, v = 1, 2048, 32768
logits = torch.empty(b, t, v, dtype=torch.bfloat16).fill_(0.5)  # touched, so resident before 'before'
tokens = torch.randint(0, v, (b, t))
ti.set_compiled_kernels(sys.argv[1].startswith("compiled"))
# warm-up: one-off allocations, and the compilations (128 rows are above their threshold)
warm = logits[:, :128].detach().requires_grad_(sys.argv[1].endswith("grad"))
if warm.requires_grad:
    ti.token_logprobs(warm, tokens[:, :128]).float().sum().backward()
with torch.no_grad():
    ti.token_logprobs(logits[:, :128], tokens[:, :128])
    torch.log_softmax(logits[:, :4].float(), -1)

def status_kib(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))

with open("/proc/self/clear_refs", "w") as fh:  # reset the high-water mark to the current resident set
    fh.write("5")
before = status_kib("VmRSS")
if sys.argv[1].endswith("grad"):  # forward + backward: the gradient (one input-sized bf16 tensor) is the floor
    x = logits.requires_grad_(True)
    ti.token_logprobs(x, tokens).float().sum().backward()
else:
    with torch.no_grad():
        if sys.argv[1] in ("compiled", "chunked"):
            out = ti.token_logprobs(logits, tokens)
        else:
            out = torch.log_softmax(logits.float(), -1).gather(-1, tokens[..., None]).squeeze(-1)
after = status_kib("VmHWM")
print(json.dumps({"input_kib": logits.numel() * 2 // 1024, "extra_kib": after - before}))
"""


def _peak_extra(modes: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Run the script once per mode, in parallel subprocesses; parse the JSON line each prints."""
    # A fixed glibc mmap threshold (1 MiB) turns off its dynamic threshold, under which freed 16 MiB temporaries are
    # recycled inside a fragmenting heap: then every large tensor is its own mapping, returned to the OS when freed,
    # and peak RSS measures live tensors rather than allocator fragmentation.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    procs = {
        mode: subprocess.Popen(
            [sys.executable, "-c", _RSS_SCRIPT, mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for mode in modes
    }
    results = {}
    for mode, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results[mode] = json.loads(out.strip().splitlines()[-1])
    return results


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status and clear_refs are Linux's")
def test_peak_rss_chunked_and_compiled_vs_naive_bf16() -> None:
    results = _peak_extra(("compiled", "chunked", "naive"))
    naive = results["naive"]
    input_kib = naive["input_kib"]  # 128 MiB of bf16 logits
    # naive: a float32 upcast (2x the input) plus the float32 log_softmax (2x): up to 4x the input. The kernel's
    # accounting of resident pages varies with machine load (measured: 228 to 512 MiB), so the bound is one input.
    assert naive["extra_kib"] > input_kib, naive
    # chunked (eager): a few [32, 32768] float32 chunk buffers; compiled: only the two [B*T] float32 outputs
    for mode in ("chunked", "compiled"):
        assert results[mode]["extra_kib"] < input_kib // 8, results
        assert results[mode]["extra_kib"] < naive["extra_kib"] / 8, results


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status and clear_refs are Linux's")
def test_peak_rss_of_the_compiled_gradient_is_the_gradient() -> None:
    results = _peak_extra(("compiled_grad", "chunked_grad"))
    input_kib = results["compiled_grad"]["input_kib"]
    for mode in ("compiled_grad", "chunked_grad"):  # the gradient itself, plus outputs and chunk buffers
        assert input_kib <= results[mode]["extra_kib"] < input_kib + input_kib // 8, results


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["token_logprobs", "entropy_from_logits"])
def test_cuda_peak_memory(which: str) -> None:
    device = torch.device("cuda")
    b, t, v = 4, 4096, 32000
    logits = torch.randn(b, t, v, device=device, dtype=torch.bfloat16).requires_grad_(True)
    tokens = torch.randint(0, v, (b, t), device=device)
    input_bytes = logits.numel() * 2
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    if which == "token_logprobs":
        out = ti.token_logprobs(logits, tokens)
    else:
        out = ti.entropy_from_logits(logits)
    torch.cuda.synchronize()
    forward_extra = torch.cuda.max_memory_allocated() - base
    # chunk temporaries of ~16 MiB (default CHUNK_ELEMENTS) against 1000 MiB of logits
    assert forward_extra < input_bytes // 8, forward_extra
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out.sum().backward()
    torch.cuda.synchronize()
    backward_extra = torch.cuda.max_memory_allocated() - base
    # the gradient (one input-sized bf16 tensor) plus chunk temporaries; a naive float32 path needs >= 3x the input
    assert backward_extra < input_bytes + input_bytes // 8, backward_extra
