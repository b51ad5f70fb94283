"""Fixtures of the end-to-end tests: a tiny configuration that runs the whole pipeline in seconds."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("matplotlib")

TINY: dict[str, Any] = {
    "max_new_tokens": 8,
    "demo_max_len": 5,
    "n_embd": 32,
    "n_head": 2,
    "sft_examples": 512,
    "sft_steps": 30,
    "sft_batch_size": 32,
    "rm_prompts": 128,
    "rm_steps": 20,
    "rm_batch_size": 8,
    "rm_eval_prompts": 64,
    "ppo_steps": 6,
    "rollout_batch_size": 16,
    "minibatch_size": 8,
    "ppo_epochs": 2,
    "ptx_batch_size": 8,
    "eval_prompts": 32,
    "save_every": 2,
}
"""Every phase of the pipeline, shrunk: checks integration, not learning (that is test_demo_slow)."""


@pytest.fixture(scope="session")
def tiny() -> dict[str, Any]:
    """A fresh copy of TINY."""
    return dict(TINY)
