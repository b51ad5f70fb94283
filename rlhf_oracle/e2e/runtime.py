"""Reproducibility and device plumbing: seeding, determinism, autocast, RNG state for checkpoints."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .config import DemoConfig


def resolve_device(cfg: DemoConfig) -> torch.device:
    """The torch device of ``cfg.device`` ('auto' -> cuda if available); a clear error if CUDA is missing."""
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"DemoConfig: 'device' is {cfg.device!r} but CUDA is not available")
    if cfg.dtype == "bfloat16" and device.type != "cuda":
        raise ValueError("DemoConfig: 'dtype' bfloat16 (autocast) is offered on CUDA only; use float32 on CPU")
    return device


@contextlib.contextmanager
def torch_settings(cfg: DemoConfig, device: torch.device) -> Iterator[None]:
    """Fixed thread count, deterministic algorithms and (CPU) flush-denormal for the duration of a run, so that the
    same seed gives the same run; the process-wide settings are restored afterwards, so that a caller (a test
    suite, a notebook) does not inherit them: flush-denormal, for one, breaks hypothesis's subnormal floats."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_benchmark = torch.backends.cudnn.benchmark
    try:
        if device.type == "cpu":
            torch.set_num_threads(cfg.num_threads)
            torch.set_flush_denormal(True)  # tiny Adam updates otherwise hit denormals: several times slower on CPU
        if cfg.deterministic:
            if device.type == "cuda":  # cuBLAS needs a fixed workspace for deterministic matmuls (set before first use)
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
            if device.type == "cuda":
                torch.backends.cudnn.benchmark = False
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)  # torch's default (there is no getter)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = cudnn_benchmark


def seed_everything(seed: int) -> None:
    """Seed python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the legacy global RNG, for third-party code)
    torch.manual_seed(seed)


def derive_seed(seed: int, *parts: int) -> int:
    """A seed for a sub-stream (a phase, a step) that depends only on the run seed and the parts."""
    ss = np.random.SeedSequence([seed % 2**32, *parts])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def phase_key(beta0: float) -> int:
    """The seed part of a PPO phase: a function of its own setting (the initial beta), not of its place in the
    list, so that ``--betas 0.1`` and ``--betas 0,0.1`` give the 0.1 phase the same random draws."""
    digest = hashlib.sha256(repr(float(beta0)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def numpy_rng(seed: int, *parts: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *parts))


def autocast(cfg: DemoConfig, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast for model forward passes when cfg.dtype == 'bfloat16' (CUDA), else a no-op."""
    if cfg.dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rng_state() -> dict[str, Any]:
    """Every global RNG state (saved in checkpoints)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def backward(loss: torch.Tensor) -> None:
    """``loss.backward()`` (one place for the untyped call)."""
    loss.backward()  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Put modules in eval mode for the block, restoring their previous mode after."""
    was = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, w in zip(modules, was, strict=True):
            m.train(w)
