"""The letter-repeat task: prompts, demonstrations and the hand-computed gold reward."""

from __future__ import annotations

import numpy as np
import pytest

from rlhf_oracle.e2e.task import SEPARATOR, LetterRepeatTask


@pytest.mark.parametrize(
    ("prompt", "reply", "gold"),
    [
        ("cagd:", "cbcac", 3.0),  # c at positions 0, 2, 4
        ("cagd:", "aagg", 0.0),  # other prompt letters do not count
        ("aaaa:", "aaaaaaa", 7.0),
        ("bdae:", "", 0.0),  # an immediate EOS
        ("hbbb:", "bbbbh", 1.0),  # only the FIRST prompt letter is the target
    ],
)
def test_gold_reward_hand_computed(prompt: str, reply: str, gold: float) -> None:
    assert LetterRepeatTask().gold_reward(prompt, reply) == gold


def test_prompts_have_the_documented_form() -> None:
    task = LetterRepeatTask(alphabet="abc", prompt_len=3)
    prompts = task.sample_prompts(50, np.random.default_rng(0))
    assert all(len(p) == 4 and p.endswith(SEPARATOR) and set(p[:3]) <= set("abc") for p in prompts)


def test_demonstrations_hit_the_target_at_the_requested_rate() -> None:
    task = LetterRepeatTask(alphabet="abcdefgh", prompt_len=4)
    rng = np.random.default_rng(1)
    prompts = task.sample_prompts(4000, rng)
    replies = task.sample_replies(prompts, rng, target_rate=0.25, min_len=3, max_len=8)
    assert all(3 <= len(r) <= 8 for r in replies)
    letters = sum(len(r) for r in replies)
    # P(letter == target) = rate + (1 - rate) / |alphabet| = 0.25 + 0.75 / 8
    rate = task.gold_rewards(prompts, replies).sum() / letters
    assert abs(rate - (0.25 + 0.75 / 8)) < 0.01
    for r, target_rate in ((0.0, 1 / 8), (1.0, 1.0)):
        reps = task.sample_replies(prompts[:500], rng, target_rate=r, min_len=4, max_len=4)
        assert abs(task.gold_rewards(prompts[:500], reps).mean() / 4 - target_rate) < 0.03
