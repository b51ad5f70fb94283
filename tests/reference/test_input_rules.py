"""Rules that hold for every function of the catalogue, in the reference and the torch twin alike.

- B = 0 (an empty batch): a function whose output keeps the batch axis returns an empty output; a function that
  reduces the batch to a scalar refuses it, naming ``B >= 1`` (the mean of nothing is undefined); the batch
  statistics of ``whiten`` and of the estimators that whiten (REINFORCE++ and its baseline) refuse an empty mask.
- Boolean flags are real bools: ``"no"``, ``"false"``, 0 or None are refused by name, never read as truthy.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from rlhf_oracle import reference as R
from rlhf_oracle import torch_impl as T
from rlhf_oracle.properties.calls import sample_cases
from rlhf_oracle.properties.registry import REGISTRY

SCALAR = {f for f, spec in REGISTRY.items() if inspect.signature(spec.reference).return_annotation in ("float", float)}
"""The formulas that reduce the batch to one number (read from the reference's return annotation)."""
NO_BATCH = {"adaptive_kl_update", "entropy_from_logits"}  # no batch axis of its own / drawn without one
WHITENED = {"whiten", "reinforce_pp_advantages", "reinforce_pp_baseline_advantages"}  # batch statistics


def _empty(a: object) -> object:
    return a[:0] if isinstance(a, np.ndarray) and a.ndim >= 1 else a


def _torch(a: object) -> object:
    return torch.as_tensor(a) if isinstance(a, np.ndarray) else a


@pytest.mark.parametrize("formula", [f for f in REGISTRY if f not in NO_BATCH])
def test_empty_batch_rule(formula: str) -> None:
    spec = REGISTRY[formula]
    (case,) = sample_cases(spec.cases(), 1)
    args = [_empty(a) for a in case.args]
    kwargs = {k: _empty(v) for k, v in case.kwargs.items()}
    twin = getattr(T, formula)
    if formula in SCALAR or formula in WHITENED:
        expected = "no valid token" if formula in WHITENED else "with B >= 1"
        with pytest.raises(ValueError, match=expected):
            spec.reference(*args, **kwargs)
        with pytest.raises(ValueError, match=expected):
            twin(*[_torch(a) for a in args], **{k: _torch(v) for k, v in kwargs.items()})
        return
    ref_out = spec.reference(*args, **kwargs)
    twin_out = twin(*[_torch(a) for a in args], **{k: _torch(v) for k, v in kwargs.items()})
    for r, t in zip(ref_out if isinstance(ref_out, tuple) else (ref_out,),
                    twin_out if isinstance(twin_out, tuple) else (twin_out,), strict=True):  # fmt: skip
        assert np.asarray(r).shape[0] == 0 and tuple(t.shape) == np.asarray(r).shape


@pytest.mark.parametrize("value", ["no", "false", "False", 0, 1, None])
def test_boolean_flags_must_be_bools(value: object) -> None:
    x, m = np.arange(4.0)[None], np.ones((1, 4), dtype=bool)
    xt, mt = torch.as_tensor(x), torch.as_tensor(m)
    scores = np.array([1.0, 2.0, 0.5, 0.0])
    for fn, args in ((R.whiten, (x, m)), (T.whiten, (xt, mt))):
        for flag in ("shift_mean", "unbiased"):
            with pytest.raises(ValueError, match=rf"^whiten: '{flag}' must be True or False, got {value!r}$"):
                fn(*args, **{flag: value})
    for fn, s in ((R.grpo_advantages, scores), (T.grpo_advantages, torch.as_tensor(scores))):
        for flag in ("std_normalize", "unbiased"):
            with pytest.raises(ValueError, match=rf"^grpo_advantages: '{flag}' must be True or False"):
                fn(s, 2, **{flag: value})


def test_numpy_bools_are_bools() -> None:
    x, m = np.arange(4.0)[None], np.ones((1, 4), dtype=bool)
    np.testing.assert_array_equal(R.whiten(x, m, unbiased=np.bool_(False)), R.whiten(x, m, unbiased=False))


# ----------------------------------------------------------------------------------------------------------------
# the same refusal, with the same words, in both implementations (issue 18)


def _both_raise(call: Callable[[Any], object], match: str) -> None:
    """``call(impl)`` raises ValueError matching ``match`` for the reference and for the twin."""
    for impl in (R, T):
        with pytest.raises(ValueError, match=match):
            call(impl)


def test_whiten_of_identical_values_with_eps_0_is_refused_like_grpo() -> None:
    x, m = np.full((2, 3), 0.7), np.ones((2, 3), dtype=bool)

    def conv(impl: Any, a: np.ndarray) -> Any:
        return a if impl is R else torch.as_tensor(a)

    _both_raise(lambda i: i.whiten(conv(i, x), conv(i, m), eps=0.0), r"whiten: the valid values of 'x' are identical")
    _both_raise(lambda i: i.grpo_advantages(conv(i, np.zeros(4)), 2, eps=0.0), r"group 0 has identical scores")
    assert np.allclose(R.whiten(x, m), 0.0, atol=1e-9)  # with the default eps a constant whitens to ~0


def test_kl_exact_over_an_empty_vocabulary_is_refused_by_both() -> None:
    z = np.zeros((2, 0))
    _both_raise(
        lambda i: i.kl_exact(z if i is R else torch.as_tensor(z), z if i is R else torch.as_tensor(z)),
        r"kl_exact: 'logits' must have shape \[\.\.\., V\] with V >= 1, got \(2, 0\)",
    )


@pytest.mark.parametrize("kl", ["5", None, [5.0], True])
def test_adaptive_kl_update_refuses_a_kl_that_is_not_a_number(kl: object) -> None:
    _both_raise(lambda i: i.adaptive_kl_update(0.1, kl, 6.0, 10, 100), r"adaptive_kl_update: 'kl' must be a number")
    assert T.adaptive_kl_update(0.1, torch.tensor(6.0), 6.0, 10, 100) == pytest.approx(0.1)  # 0-dim tensors pass


@pytest.mark.parametrize("value", ["no", 0, None])
def test_value_check_switch_takes_only_bools(value: object) -> None:
    with pytest.raises(ValueError, match=r"set_value_checks: 'enabled' must be True or False"):
        T.set_value_checks(value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"value_checks: 'enabled' must be True or False"):
        with T.value_checks(value):  # type: ignore[arg-type]
            pass
    assert T.value_checks_enabled()  # the refused call changed nothing
