r"""The accumulation property: a per-micro-batch loss, split over micro-batches and ranks, has the gradient of the
global objective.

``check_distributed(candidate, agg=...)`` draws global batches (hypothesis: row lengths, empty rows where the mode
allows them, values), splits each over ``W`` ranks and ``K`` micro-batches per rank for every ``(W, K)`` in
``splits`` (contiguous rows, unequal sizes when B is not a multiple, each micro-batch trimmed to its own longest
row as a dynamic-padding collator does), calls the candidate once per micro-batch on a view of one float64 leaf,
accumulates the backward passes, averages the ranks as DDP does (``rank_gradients="mean"``) or sums them, and
compares the value and the gradient with the global aggregate of :func:`rlhf_oracle.reference.aggregate` and its
gradient written by hand (:math:`m_{b,t} w_{b,t} / D`, see :mod:`rlhf_oracle.torch_impl.distributed`).

The candidate is ``candidate(values, mask, info) -> 0-dim tensor``: its micro-batch's share, with ``info`` a
:class:`MicroBatch` (global counts in ``info.normaliser``, this rank's in ``info.rank_normaliser``, the indices
and sizes of the split). On a mismatch the diagnosis replays the usual wrong normalisers through the same split
and names the one whose gradient the candidate reproduces (per-micro-batch mean, per-rank mean, padded length,
a missing world-size factor, ...).

In-process simulation of the ranks is exact for this property (the ranks' gradients are combined by a sum or a
mean, nothing else); ``tests/torch_impl/test_distributed.py`` runs the normalisers under real ``torch.distributed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .. import reference as ref
from ..torch_impl.distributed import RANK_GRADIENTS, Normaliser, micro_batch_aggregate
from ..torch_impl.policy import AGGREGATION_MODES
from .axes import aggregation

__all__ = ["DEFAULT_SPLITS", "DistributedMismatch", "DistributedReport", "MicroBatch", "check_distributed"]

DEFAULT_SPLITS: tuple[tuple[int, int], ...] = ((1, 1), (1, 2), (1, 4), (2, 1), (2, 2), (4, 1), (2, 4))
"""(ranks W, micro-batches per rank K) tried by default: accumulation over 1, 2 and 4 micro-batches, 2 and 4
ranks, and both at once."""

Share = Callable[[torch.Tensor, torch.Tensor, "MicroBatch"], torch.Tensor]


@dataclass(frozen=True)
class MicroBatch:
    """What a per-micro-batch loss receives besides its tensors."""

    rank: int
    index: int
    """k, the micro-batch's index on its rank."""
    world_size: int
    num_micro_batches: int
    """K, micro-batches per rank."""
    normaliser: Normaliser
    """Counts of the global batch (what :func:`rlhf_oracle.torch_impl.global_normaliser` returns on every rank)."""
    rank_normaliser: Normaliser
    """Counts of this rank's micro-batches only (the same call without the all-reduce)."""


@dataclass
class DistributedReport:
    agg: str
    rank_gradients: str
    examples: int = 0
    splits: tuple[tuple[int, int], ...] = ()
    failure: str | None = None
    diagnosis: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.failure is None

    def message(self) -> str:
        head = f"check_distributed (agg={self.agg!r}, rank gradients {self.rank_gradients})"
        if self.passed:
            return f"{head}: passed on {self.examples} batches x splits {list(self.splits)}"
        lines = [f"{head}: FAILED", f"  {self.failure}"]
        if self.diagnosis:
            lines.append(f"  diagnosis: {self.diagnosis}")
        return "\n".join(lines)


class DistributedMismatch(AssertionError):
    """The accumulated gradient differs from the global one; ``.report`` holds the details."""

    def __init__(self, report: DistributedReport) -> None:
        super().__init__(report.message())
        self.report = report


# ---- the split and the simulation


@dataclass(frozen=True)
class _Batch:
    values: np.ndarray  # [B, T] float64
    mask: np.ndarray  # [B, T] bool


def _split(batch: int, world: int, micro: int) -> list[list[np.ndarray]]:
    """Row indices per rank, per micro-batch: contiguous, as even as possible."""
    return [list(np.array_split(rank_rows, micro)) for rank_rows in np.array_split(np.arange(batch), world)]


def _trimmed_length(mask: np.ndarray) -> int:
    """The micro-batch's padded length under dynamic padding: its longest row, at least 1."""
    valid = np.nonzero(mask.any(axis=0))[0]
    return int(valid[-1]) + 1 if valid.size else 1


def _counts(masks: Sequence[np.ndarray], world: int) -> Normaliser:
    return Normaliser(
        sequences=sum(m.shape[0] for m in masks),
        tokens=int(sum(m.sum() for m in masks)),
        length=max(m.shape[1] for m in masks),
        world_size=world,
    )


def _accumulate(
    share: Share, batch: _Batch, world: int, micro: int, rank_gradients: str
) -> tuple[float, np.ndarray, int]:
    """(combined loss, combined gradient w.r.t. the values, global padded length) of one split."""
    x = torch.tensor(batch.values, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor(batch.mask)
    split = _split(batch.values.shape[0], world, micro)
    pieces = [[(rows, _trimmed_length(batch.mask[rows])) for rows in rank] for rank in split]
    global_counts = _counts([batch.mask[rows, :length] for rank in pieces for rows, length in rank], world)
    total = torch.zeros((), dtype=torch.float64)
    for r, rank in enumerate(pieces):
        rank_counts = _counts([batch.mask[rows, :length] for rows, length in rank], 1)
        for k, (rows, length) in enumerate(rank):
            if rows.size == 0:
                continue
            idx = torch.as_tensor(rows)
            info = MicroBatch(r, k, world, micro, global_counts, rank_counts)
            out = share(x[idx, :length], mask[idx, :length], info)
            if not isinstance(out, torch.Tensor) or out.numel() != 1:
                raise TypeError(f"the candidate must return a 0-dim tensor, got {type(out).__name__}")
            total = total + out.reshape(()).to(torch.float64)
    combined = total / world if rank_gradients == "mean" else total
    combined.backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None
    return float(combined.detach()), x.grad.numpy().copy(), global_counts.length


def _expected(batch: _Batch, agg: str, length: int, max_tokens: int | None) -> tuple[float, np.ndarray]:
    """The global aggregate (reference) over the batch padded to ``length``, and its gradient by hand."""
    values, mask = batch.values[:, :length], batch.mask[:, :length]
    value = ref.aggregate(values, mask, agg, max_tokens=max_tokens)
    grad = np.zeros_like(batch.values)
    g = aggregation.weights(mask, agg, max_tokens)
    grad[:, :length] = g
    return value, grad


# ---- the usual wrong normalisers (the diagnosis replays them through the same split)


def _sums(x: torch.Tensor, m: torch.Tensor, agg: str) -> torch.Tensor:
    """Masked sums as most trainers write them (``x * mask``: a 0 count then gives 0 * inf = NaN, as in theirs)."""
    xm = x * m
    if agg == "seq-mean-token-mean":
        return (xm.sum(-1) / m.sum(-1).clamp_min(1)).sum()
    return xm.sum()


def _local(mask: torch.Tensor) -> Normaliser:
    return Normaliser(int(mask.shape[0]), int(mask.sum()), int(mask.shape[1]))


def _hypotheses(agg: str, max_tokens: int | None, rank_gradients: str) -> dict[str, Share]:
    w = (lambda i: i.world_size) if rank_gradients == "mean" else (lambda i: 1)

    def make(scale: Callable[[torch.Tensor, torch.Tensor, MicroBatch], Any]) -> Share:
        return lambda x, m, i: _sums(x, m, agg) * scale(x, m, i)

    def over(numerator: int, denominator: int) -> Any:
        """numerator / denominator as a float64 tensor: a count of 0 gives inf, and NaN in the gradient, as the
        wrong normaliser does in the candidate (a micro-batch with no valid token divided by its own count)."""
        return torch.tensor(float(numerator), dtype=torch.float64) / float(denominator)

    what = {"token-mean": "token count", "seq-mean-token-sum-norm": "B x L"}.get(agg, "sequence count")
    h: dict[str, Share] = {
        "the global normaliser (correct)": make(lambda x, m, i: over(w(i), i.normaliser.denominator(agg, max_tokens))),
        f"per-micro-batch mean: each micro-batch divided by its own {what}, then by K (micro-batches)": make(
            lambda x, m, i: over(w(i), _local(m).denominator(agg, max_tokens) * i.num_micro_batches)
        ),
        f"per-micro-batch mean: each micro-batch divided by its own {what}, not by K (the loss grows with K)": make(
            lambda x, m, i: over(w(i), _local(m).denominator(agg, max_tokens))
        ),
        f"per-rank mean: the {what} of this rank's micro-batches, not all-reduced over the ranks": make(
            lambda x, m, i: over(w(i), i.rank_normaliser.denominator(agg, max_tokens))
        ),
        "global normaliser without the world-size factor: DDP's gradient average divides the sum by W": make(
            lambda x, m, i: over(1, i.normaliser.denominator(agg, max_tokens))
        ),
    }
    h["the mask is not applied: padding values are summed too"] = lambda x, m, i: (
        (x.sum() if agg != "seq-mean-token-mean" else (x.sum(-1) / m.sum(-1)).sum())
        * over(w(i), i.normaliser.denominator(agg, max_tokens))
    )
    if agg == "token-mean":
        h["padded length: each micro-batch divided by B_k x T_k (padding counted as tokens), then by K"] = make(
            lambda x, m, i: over(w(i), m.shape[0] * m.shape[1] * i.num_micro_batches)
        )
        h["padded length: divided by the global B x T (padding counted as tokens)"] = make(
            lambda x, m, i: over(w(i), i.normaliser.sequences * i.normaliser.length)
        )
    if agg == "seq-mean-token-sum-norm" and max_tokens is None:
        h["padded length of the micro-batch (T_k) instead of the global length L"] = make(
            lambda x, m, i: over(w(i), i.normaliser.sequences * m.shape[1])
        )
    return h


def _diagnose(
    candidate: Share, batch: _Batch, splits: Sequence[tuple[int, int]], agg: str, max_tokens: int | None,
    rank_gradients: str,
) -> str | None:  # fmt: skip
    """The wrong normaliser whose gradient equals the candidate's on every split of the failing batch and of two
    probe batches whose row counts do not divide evenly (where the per-micro-batch and per-rank counts differ)."""
    batches = [batch, *(_probe(batch, extra) for extra in (1, 3))]
    observed = [_accumulate(candidate, b, w, k, rank_gradients)[1] for b in batches for w, k in splits]
    for name, share in _hypotheses(agg, max_tokens, rank_gradients).items():
        if name.endswith("(correct)"):
            continue
        predicted = [_accumulate(share, b, w, k, rank_gradients)[1] for b in batches for w, k in splits]
        if all(
            np.allclose(
                p, o, rtol=1e-9, atol=1e-12 * max(1e-300, float(np.nanmax(np.abs(o), initial=0.0))), equal_nan=True
            )
            for p, o in zip(predicted, observed, strict=True)
        ):
            return f"wrong normaliser: {name}"
    return None


def _probe(batch: _Batch, extra: int) -> _Batch:
    """``batch`` with ``extra`` more rows of varied lengths (at least one valid token each), fixed values."""
    rows, length = batch.mask.shape
    rng = np.random.default_rng(rows * 31 + extra)
    lengths = rng.integers(1, length + 1, size=extra)
    mask = np.concatenate([batch.mask, np.arange(length)[None, :] < lengths[:, None]])
    values = np.concatenate([batch.values, rng.normal(size=(extra, length))])
    return _Batch(values, mask)


# ---- the check


@st.composite
def _batches(draw: st.DrawFn, agg: str, min_rows: int) -> _Batch:
    rows = draw(st.integers(min_rows, min_rows + 5))
    length = draw(st.integers(1, 9))
    allow_empty = agg != "seq-mean-token-mean"
    lengths = draw(st.lists(st.integers(0 if allow_empty else 1, length), min_size=rows, max_size=rows))
    if agg == "token-mean" and not any(lengths):
        lengths[0] = 1
    seed = draw(st.integers(0, 2**32 - 1))
    values = np.random.default_rng(seed).normal(size=(rows, length))
    mask = np.arange(length)[None, :] < np.asarray(lengths)[:, None]
    # padding holds ordinary finite values (NaN padding is the masked_slots property of the formula checks): a
    # share that forgets the mask is caught, one that multiplies by it is not penalised here
    return _Batch(values, mask)


def check_distributed(
    candidate: Share,
    *,
    agg: str = "token-mean",
    splits: Sequence[tuple[int, int]] = DEFAULT_SPLITS,
    rank_gradients: str = "mean",
    max_tokens: int | None = None,
    max_examples: int = 25,
) -> DistributedReport:
    """Check that ``candidate``'s micro-batch shares accumulate to the global objective ``aggregate(values, mask,
    agg)`` and its gradient, for every ``(ranks, micro-batches per rank)`` in ``splits``.

    Raises :class:`DistributedMismatch` (with the first failing batch and split, the size of the error and a
    diagnosis naming the wrong normaliser) on a mismatch; returns the :class:`DistributedReport` otherwise.
    ``torch_impl.micro_batch_aggregate`` passes; so does any share divided by the global counts of ``info``.
    """
    __tracebackhide__ = True
    if agg not in AGGREGATION_MODES:
        raise ValueError(f"check_distributed: 'agg' must be one of {AGGREGATION_MODES}, got {agg!r}")
    if rank_gradients not in RANK_GRADIENTS:
        raise ValueError(f"check_distributed: 'rank_gradients' must be one of {RANK_GRADIENTS}, got {rank_gradients!r}")
    clean = tuple((int(w), int(k)) for w, k in splits)
    if not clean or any(w < 1 or k < 1 for w, k in clean):
        raise ValueError(f"check_distributed: 'splits' must be (ranks, micro-batches) pairs >= 1, got {list(splits)}")
    report = DistributedReport(agg, rank_gradients, splits=clean)
    min_rows = max(w * k for w, k in clean)
    found: list[tuple[_Batch, int, int, str, np.ndarray]] = []

    @settings(max_examples=max_examples, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)  # fmt: skip
    @given(_batches(agg, min_rows))
    def search(batch: _Batch) -> None:
        report.examples += 1
        for world, micro in clean:
            value, grad, length = _accumulate(candidate, batch, world, micro, rank_gradients)
            expected_value, expected_grad = _expected(batch, agg, length, max_tokens)
            scale = max(1.0, float(np.abs(expected_grad).max()))
            bad_grad = not np.allclose(grad, expected_grad, rtol=1e-9, atol=1e-12 * scale)
            bad_value = not np.isclose(value, expected_value, rtol=1e-9, atol=1e-12)
            if bad_grad or bad_value:
                nonfinite = int((~np.isfinite(grad)).sum())
                if nonfinite:
                    what = (
                        f"the gradient is NaN/inf at {nonfinite} of {grad.size} positions (expected finite: a count "
                        "of 0 in a denominator, e.g. a micro-batch without valid tokens divided by its own count)"
                    )
                elif bad_grad:
                    err = float(np.abs(grad - expected_grad).max())
                    what = f"gradient off by up to {err:.3g} (largest expected entry {float(expected_grad.max()):.3g})"
                else:
                    what = f"value {value:.10g}, expected {expected_value:.10g}"
                found.append((batch, world, micro, what, grad))
                raise AssertionError(what)

    try:
        search()
    except AssertionError:
        if not found:
            raise
    if found:
        batch, world, micro, what, _ = found[-1]
        rows = batch.mask.shape[0]
        tokens = int(batch.mask.sum())
        report.failure = (
            f"{world} rank(s) x {micro} micro-batch(es), a batch of {rows} rows and {tokens} valid tokens: {what}"
        )
        report.diagnosis = _diagnose(candidate, batch, clean, agg, max_tokens, rank_gradients)
        report.details = {"ranks": world, "micro_batches": micro, "mask": batch.mask.tolist()}
        raise DistributedMismatch(report)
    return report


def reference_share(agg: str, *, max_tokens: int | None = None, rank_gradients: str = "mean") -> Share:
    """The correct share as a candidate: ``torch_impl.micro_batch_aggregate`` with the global counts of ``info``."""
    return lambda x, m, i: micro_batch_aggregate(
        x, m, agg, i.normaliser, max_tokens=max_tokens, rank_gradients=rank_gradients
    )
