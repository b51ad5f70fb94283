"""Rules that hold for every function of the catalogue, in the reference and the torch twin alike.

- B = 0 (an empty batch): a function whose output keeps the batch axis returns an empty output; a function that
  reduces the batch to a scalar refuses it, naming ``B >= 1`` (the mean of nothing is undefined); ``whiten``'s
  statistics refuse an empty mask.
- Boolean flags are real bools: ``"no"``, ``"false"``, 0 or None are refused by name, never read as truthy.
"""

from __future__ import annotations

import inspect

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
    if formula in SCALAR or formula == "whiten":
        expected = "no valid token" if formula == "whiten" else "with B >= 1"
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
