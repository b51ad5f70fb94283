"""The synthetic task: repeat the prompt's first letter.

A prompt is ``prompt_len`` random letters followed by ``':'``, e.g. ``"cagd:"``. The hidden **gold reward** of a
reply is the number of times it contains the prompt's first letter: for ``"cagd:"`` the reply ``"cbcac"`` scores 3.
Everything is human-readable and checkable by eye.

The demonstrations (the SFT corpus) are mediocre on purpose: each reply letter is the target with probability
``target_rate`` (0.25 by default) and a uniformly drawn letter otherwise, so the SFT policy scores about
1.6 of a possible ``max_new_tokens - 1``. The reward model only ever sees noisy rankings of such replies; PPO has to
discover from the learned (proxy) reward that more target letters and longer replies pay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEPARATOR = ":"


@dataclass(frozen=True)
class LetterRepeatTask:
    """Prompts, demonstrations and the gold reward of the letter-repeat task."""

    alphabet: str = "abcdefgh"
    prompt_len: int = 4

    def sample_prompts(self, n: int, rng: np.random.Generator) -> list[str]:
        """``n`` prompts: ``prompt_len`` uniform letters then ``':'``."""
        letters = np.asarray(list(self.alphabet))
        idx = rng.integers(0, len(self.alphabet), size=(n, self.prompt_len))
        return ["".join(letters[row]) + SEPARATOR for row in idx]

    @staticmethod
    def target(prompt: str) -> str:
        """The letter the gold reward counts: the prompt's first character."""
        return prompt[0]

    def gold_reward(self, prompt: str, reply: str) -> float:
        """Number of occurrences of the prompt's first letter in the reply (special tokens already removed)."""
        return float(reply.count(self.target(prompt)))

    def gold_rewards(self, prompts: list[str], replies: list[str]) -> np.ndarray:
        """:meth:`gold_reward` for each (prompt, reply) pair, as a float64 array."""
        return np.array([self.gold_reward(p, r) for p, r in zip(prompts, replies, strict=True)], dtype=np.float64)

    def sample_replies(
        self,
        prompts: list[str],
        rng: np.random.Generator,
        *,
        target_rate: float | np.ndarray,
        min_len: int,
        max_len: int,
    ) -> list[str]:
        """Replies of uniform length in [min_len, max_len] whose letters are the target with prob ``target_rate``.

        ``target_rate`` may be one number or one per prompt (a population of "labellers' models" of varied quality).
        """
        rates = np.broadcast_to(np.asarray(target_rate, dtype=np.float64), (len(prompts),))
        replies = []
        for prompt, rate in zip(prompts, rates, strict=True):
            length = int(rng.integers(min_len, max_len + 1))
            hit = rng.random(length) < rate
            other = rng.integers(0, len(self.alphabet), size=length)
            replies.append(
                "".join(self.target(prompt) if h else self.alphabet[o] for h, o in zip(hit, other, strict=True))
            )
        return replies
