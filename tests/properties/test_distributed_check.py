"""check_distributed: the correct shares pass for every mode and rank convention; the usual wrong normalisers
fail with a diagnosis naming them. The candidates here are written as trainers write them (``x * mask``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from rlhf_oracle.properties import DistributedMismatch, MicroBatch, check_distributed
from rlhf_oracle.properties.distributed import reference_share
from rlhf_oracle.torch_impl import AGGREGATION_MODES

Share = Callable[[torch.Tensor, torch.Tensor, MicroBatch], torch.Tensor]


@pytest.mark.parametrize("rank_gradients", ["mean", "sum"])
@pytest.mark.parametrize("agg", AGGREGATION_MODES)
def test_the_global_normaliser_passes(agg: str, rank_gradients: str) -> None:
    report = check_distributed(reference_share(agg, rank_gradients=rank_gradients), agg=agg,
                               rank_gradients=rank_gradients, max_examples=15)  # fmt: skip
    assert report.passed and report.examples == 15
    assert (1, 4) in report.splits and (4, 1) in report.splits and (2, 2) in report.splits


def test_max_tokens_constant_normaliser_passes() -> None:
    agg = "seq-mean-token-sum-norm"
    assert check_distributed(reference_share(agg, max_tokens=16), agg=agg, max_tokens=16, max_examples=10).passed


def _token_sum(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (x * m).sum()


def _row_means(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return ((x * m).sum(-1) / m.sum(-1)).sum()


WRONG: dict[str, tuple[str, Share, str]] = {
    # the Hugging Face gradient-accumulation bug: mean over the micro-batch's tokens, then / K
    "micro-mean/K": ("token-mean", lambda x, m, i: _token_sum(x, m) / m.sum() / i.num_micro_batches * i.world_size,
                     "per-micro-batch mean: each micro-batch divided by its own token count, then by K"),
    "micro-mean": ("token-mean", lambda x, m, i: _token_sum(x, m) / m.sum() * i.world_size,
                   "per-micro-batch mean: each micro-batch divided by its own token count, not by K"),
    "rank-mean": ("token-mean", lambda x, m, i: _token_sum(x, m) / i.rank_normaliser.tokens * i.world_size,
                  "per-rank mean: the token count of this rank's micro-batches, not all-reduced"),
    "padded": ("token-mean", lambda x, m, i: _token_sum(x, m) / m.numel() / i.num_micro_batches * i.world_size,
               "padded length: each micro-batch divided by B_k x T_k"),
    "no-W": ("token-mean", lambda x, m, i: _token_sum(x, m) / i.normaliser.tokens,
             "global normaliser without the world-size factor"),
    "no-mask": ("token-mean", lambda x, m, i: x.sum() / i.normaliser.tokens * i.world_size,
                "the mask is not applied"),
    "seq-micro-mean/K": ("seq-mean-token-mean",
                         lambda x, m, i: _row_means(x, m) / m.shape[0] / i.num_micro_batches * i.world_size,
                         "per-micro-batch mean: each micro-batch divided by its own sequence count, then by K"),
    "seq-sum-rank": ("seq-mean-token-sum",
                     lambda x, m, i: _token_sum(x, m) / i.rank_normaliser.sequences * i.world_size,
                     "per-rank mean: the sequence count of this rank's micro-batches"),
    "norm-T_k": ("seq-mean-token-sum-norm",
                 lambda x, m, i: _token_sum(x, m) / (i.normaliser.sequences * m.shape[1]) * i.world_size,
                 "padded length of the micro-batch (T_k) instead of the global length L"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(WRONG))
def test_wrong_normalisers_are_named(name: str) -> None:
    agg, share, diagnosis = WRONG[name]
    with pytest.raises(DistributedMismatch) as info:
        check_distributed(share, agg=agg, max_examples=25)
    report = info.value.report
    assert not report.passed and report.failure
    assert report.diagnosis is not None and diagnosis in report.diagnosis, report.message()
    assert "rank(s) x" in str(info.value) and "diagnosis: wrong normaliser" in str(info.value)


def test_the_naive_mean_on_an_ordinary_batch_is_off_by_the_token_imbalance() -> None:
    """No empty micro-batch: the error is the imbalance of the token counts, computed by hand."""
    import numpy as np

    from rlhf_oracle.properties.distributed import _accumulate, _Batch, _expected

    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0]], dtype=bool)  # 7 + 2 tokens
    batch = _Batch(np.ones((4, 4)), mask)
    naive = WRONG["micro-mean/K"][1]
    _, grad, length = _accumulate(naive, batch, 1, 2, "mean")
    _, expected = _expected(batch, "token-mean", length, None)
    # global: every valid token weighs 1/9; naive: 1/(7 * 2) in the first micro-batch, 1/(2 * 2) in the second
    assert np.allclose(expected[mask], 1 / 9)
    assert np.allclose(grad[:2][mask[:2]], 1 / 14) and np.allclose(grad[2:][mask[2:]], 1 / 4)


def test_bad_arguments_are_refused_by_name() -> None:
    share = reference_share("token-mean")
    with pytest.raises(ValueError, match=r"^check_distributed: 'agg' must be one of"):
        check_distributed(share, agg="mean")
    with pytest.raises(ValueError, match=r"^check_distributed: 'rank_gradients' must be one of"):
        check_distributed(share, rank_gradients="avg")
    with pytest.raises(ValueError, match=r"^check_distributed: 'splits' must be"):
        check_distributed(share, splits=[(0, 1)])
