"""Input validation of the torch twin, and the module-level switch for the checks that force a device sync.

Messages reproduce ``docs/api-contract.md`` word for word (the same texts as the NumPy reference). Two kinds
of checks:

- *static* checks (rank, shape, dtype, hyper-parameters) look only at metadata and Python numbers: they always
  run, cost nothing and trace cleanly under ``torch.compile``;
- *value* checks (NaN/inf at valid positions, mask values, empty rows, k3 overflow, token range) read tensor
  data, which on CUDA means a device-to-host sync. They run only while :func:`value_checks_enabled` is true:
  on by default, off under :func:`set_value_checks` ``(False)`` / ``with value_checks(False):``, and always off
  while ``torch.compile`` traces (``torch.compiler.is_compiling()``).
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

_VALUE_CHECKS = True


def set_value_checks(enabled: bool) -> None:
    """Turn the data-dependent value checks on or off for the whole module (default: on)."""
    global _VALUE_CHECKS
    _VALUE_CHECKS = flag("set_value_checks", "enabled", enabled)


@contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Context manager form of :func:`set_value_checks`; restores the previous setting on exit."""
    global _VALUE_CHECKS
    previous = _VALUE_CHECKS
    _VALUE_CHECKS = flag("value_checks", "enabled", enabled)
    try:
        yield
    finally:
        _VALUE_CHECKS = previous


def value_checks_enabled() -> bool:
    """Whether value checks run now: the switch is on and we are not inside a ``torch.compile`` trace."""
    return _VALUE_CHECKS and not torch.compiler.is_compiling()


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype used for arithmetic: float32 for the half types (bf16/fp16), the input dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def shape_str(shape: Sequence[int]) -> str:
    """A shape as a Python tuple: ``(2, 3)``, ``(3,)``, ``()`` (as the reference writes it)."""
    return str(tuple(int(s) for s in shape))


def dtype_str(dtype: torch.dtype) -> str:
    """``torch.int64`` -> ``int64``, so that messages read as the reference's NumPy ones."""
    return str(dtype).removeprefix("torch.")


def _as_tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def as_float(fn: str, name: str, x: Any, *, ndim: int | None = None, shape_doc: str = "") -> torch.Tensor:
    """Refuse non-floating tensors and wrong ranks; return the tensor unchanged (no copy, no cast)."""
    t = _as_tensor(x)
    if not t.is_floating_point():
        raise TypeError(f"{fn}: '{name}' must be a floating array, got dtype {dtype_str(t.dtype)}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{fn}: '{name}' must have shape {shape_doc}, got {shape_str(t.shape)}")
    return t


def as_int(fn: str, name: str, x: Any, *, ndim: int, shape_doc: str) -> torch.Tensor:
    t = _as_tensor(x)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{fn}: '{name}' must be an integer array, got dtype {dtype_str(t.dtype)}")
    if t.ndim != ndim:
        raise ValueError(f"{fn}: '{name}' must have shape {shape_doc}, got {shape_str(t.shape)}")
    return t


def as_mask(fn: str, x: Any, *, like: torch.Tensor | None = None, like_name: str = "") -> torch.Tensor:
    """A bool or 0/1 mask as a bool tensor; checks its rank and its shape against ``like``."""
    t = _as_tensor(x)
    if t.dtype != torch.bool:
        if t.is_complex():
            raise ValueError(f"{fn}: 'mask' must be boolean or contain only 0 and 1")
        if value_checks_enabled() and t.numel() and not bool(((t == 0) | (t == 1)).all()):
            raise ValueError(f"{fn}: 'mask' must be boolean or contain only 0 and 1")
    if t.ndim != 2:
        raise ValueError(f"{fn}: 'mask' must have shape [B, T], got {shape_str(t.shape)}")
    if like is not None:
        same_shape(fn, "mask", t, like_name, like)
    return t if t.dtype == torch.bool else t != 0


def same_shape(fn: str, name: str, x: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    if x.shape != other.shape:
        raise ValueError(
            f"{fn}: '{name}' has shape {shape_str(x.shape)}, expected {shape_str(other.shape)} to match '{other_name}'"
        )


def finite(fn: str, name: str, x: torch.Tensor, where: torch.Tensor | None = None) -> None:
    """Refuse NaN/inf, looking only at valid positions when ``where`` is given (a value check)."""
    if not value_checks_enabled() or x.numel() == 0:
        return
    bad = ~torch.isfinite(x)
    if where is not None:
        bad = bad & where
    if bool(bad.any()):
        if where is None:
            raise ValueError(f"{fn}: '{name}' contains NaN or inf")
        raise ValueError(f"{fn}: '{name}' contains NaN or inf at a valid (unmasked) position")


def no_empty_rows(fn: str, mask: torch.Tensor, mode: str) -> None:
    if not value_checks_enabled() or mask.shape[0] == 0:
        return
    empty = ~mask.any(dim=-1)
    if bool(empty.any()):
        i = int(torch.nonzero(empty)[0, 0])
        raise ValueError(f"{fn}: 'mask' row {i} has no valid token; '{mode}' divides by the row length")


def not_empty(fn: str, mask: torch.Tensor) -> None:
    if value_checks_enabled() and not bool(mask.any()):
        raise ValueError(f"{fn}: 'mask' has no valid token")


def flag(fn: str, name: str, value: object) -> bool:
    """A real bool: ``"no"``, ``"false"``, 0 or None are refused, not read as truthy/falsy (numpy bools pass)."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise ValueError(f"{fn}: '{name}' must be True or False, got {value!r}")


def _number(fn: str, name: str, value: object, condition: str) -> None:
    """A real number (not a bool, a string, None or an array): else the contract's "must be ..." message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{fn}: '{name}' must be a number {condition}, got {value!r}")


def positive(fn: str, name: str, value: float) -> float:
    _number(fn, name, value, "> 0")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{fn}: '{name}' must be > 0, got {value}")
    return float(value)


def non_negative(fn: str, name: str, value: float) -> float:
    _number(fn, name, value, ">= 0")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{fn}: '{name}' must be >= 0, got {value}")
    return float(value)


def unit_interval(fn: str, name: str, value: float) -> float:
    _number(fn, name, value, "in [0, 1]")
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{fn}: '{name}' must be in [0, 1], got {value}")
    return float(value)


def greater_than_one(fn: str, name: str, value: float) -> float:
    _number(fn, name, value, "> 1")
    if not (math.isfinite(value) and value > 1):
        raise ValueError(f"{fn}: '{name}' must be > 1, got {value}")
    return float(value)


def choice(fn: str, name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{fn}: '{name}' must be one of {tuple(choices)}, got {value!r}")
    return value


def optional_positive_int(fn: str, name: str, value: Any) -> int | None:
    """``None`` or a positive int (``bool`` refused); message ``must be a positive int or None``."""
    if value is None:
        return None
    if not isinstance(value, bool):
        try:
            as_int_value = operator.index(value)
        except TypeError:
            pass
        else:
            if as_int_value > 0:
                return as_int_value
    raise ValueError(f"{fn}: '{name}' must be a positive int or None, got {value}")


def group_size(fn: str, value: Any, n_rows: int, minimum: int) -> int:
    """A group size: an int >= ``minimum`` (``bool`` refused) that divides the ``n_rows`` rows of 'scores'."""
    size = None
    if not isinstance(value, bool):
        try:
            size = operator.index(value)
        except TypeError:
            size = None
    if size is None or size < minimum:
        raise ValueError(f"{fn}: 'group_size' must be an int >= {minimum}, got {value}")
    if n_rows % size != 0:
        raise ValueError(f"{fn}: 'scores' has {n_rows} rows, not a multiple of group_size={value}")
    return size
