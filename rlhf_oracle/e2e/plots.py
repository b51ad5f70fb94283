"""PNG plots of a run (matplotlib, Agg backend: no display needed).

- ``reward_kl.png``: gold and proxy reward, and KL to the reference, over PPO steps (one line per beta).
- ``gold_vs_proxy.png``: per-step gold against proxy reward (over-optimisation shows as proxy rising faster).
- ``frontier.png``: the reward-KL frontier, final gold reward against final KL per beta (several betas only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    rows = [m for m in history if m.get(key) is not None]
    return [int(m["step"]) for m in rows], [float(m[key]) for m in rows]


def plot_reward_kl(
    phases: dict[float, list[dict[str, Any]]],
    path: Path,
    *,
    sft_gold: float | None = None,
    target_kl: float | None = None,
) -> Path:
    fig, (ax_r, ax_k) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for i, (beta, history) in enumerate(sorted(phases.items())):
        color = f"C{i}"
        steps, gold = _series(history, "gold")
        ax_r.plot(steps, gold, color=color, label=f"gold, beta0={beta:g}")
        steps, proxy = _series(history, "proxy")
        ax_r.plot(steps, proxy, color=color, linestyle="--", alpha=0.7, label=f"proxy (RM), beta0={beta:g}")
        steps, kl = _series(history, "kl")
        ax_k.plot(steps, kl, color=color, label=f"beta0={beta:g}")
    if sft_gold is not None:
        ax_r.axhline(sft_gold, color="gray", linestyle=":", label="gold of pi_SFT")
    if target_kl is not None:
        ax_k.axhline(target_kl, color="gray", linestyle=":", label="adaptive-KL target")
    ax_r.set(xlabel="PPO step", ylabel="reward (rollout batch mean)", title="Gold vs proxy reward")
    ax_k.set(xlabel="PPO step", ylabel="KL(pi || pi_SFT), nats per reply", title="KL to the reference")
    ax_r.legend(fontsize=7)
    ax_k.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_gold_vs_proxy(phases: dict[float, list[dict[str, Any]]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 4.5), constrained_layout=True)
    for i, (beta, history) in enumerate(sorted(phases.items())):
        _, gold = _series(history, "gold")
        _, proxy = _series(history, "proxy")
        ax.scatter(proxy, gold, s=8, color=f"C{i}", alpha=0.7, label=f"beta0={beta:g}")
    ax.set(xlabel="proxy reward (RM score)", ylabel="gold reward", title="Gold vs proxy, one point per PPO step")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_frontier(finals: dict[float, dict[str, float]], path: Path, *, sft_gold: float | None = None) -> Path:
    """``finals[beta] = {"gold": ..., "kl": ...}`` of the final policies (held-out evaluation)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5), constrained_layout=True)
    items = sorted(finals.items(), key=lambda kv: kv[1]["kl"])
    ax.plot([v["kl"] for _, v in items], [v["gold"] for _, v in items], "o-", color="C0")
    for beta, v in items:
        ax.annotate(f"beta0={beta:g}", (v["kl"], v["gold"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if sft_gold is not None:
        ax.scatter([0.0], [sft_gold], color="gray", marker="s", label="pi_SFT")
        ax.legend(fontsize=7)
    ax.set(xlabel="KL(pi || pi_SFT), nats per reply", ylabel="gold reward", title="Reward-KL frontier")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(
    plot_dir: Path,
    phases: dict[float, list[dict[str, Any]]],
    finals: dict[float, dict[str, float]],
    *,
    sft_gold: float | None = None,
    target_kl: float | None = None,
) -> list[Path]:
    """All plots of a run into ``plot_dir``; the frontier only when several betas were run."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_reward_kl(phases, plot_dir / "reward_kl.png", sft_gold=sft_gold, target_kl=target_kl),
        plot_gold_vs_proxy(phases, plot_dir / "gold_vs_proxy.png"),
    ]
    if len(finals) > 1:
        paths.append(plot_frontier(finals, plot_dir / "frontier.png", sft_gold=sft_gold))
    return paths
