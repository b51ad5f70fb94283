"""Input validation shared by the reference functions.

Every error names the function and the argument, and says what was expected and what was given
(see ``docs/api-contract.md`` for the message formats, which ``torch_impl`` reproduces word for word).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.int64]


def _shape_str(shape: Sequence[int]) -> str:
    return str(tuple(int(s) for s in shape))


def as_float(fn: str, name: str, x: Any, *, ndim: int | None = None, shape_doc: str = "") -> FloatArray:
    """Convert ``x`` to a float64 array, refusing integer/bool/complex input and wrong ranks."""
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{fn}: '{name}' must be a floating array, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{fn}: '{name}' must have shape {shape_doc}, got {_shape_str(arr.shape)}")
    return arr.astype(np.float64)


def as_int(fn: str, name: str, x: Any, *, ndim: int, shape_doc: str) -> IntArray:
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{fn}: '{name}' must be an integer array, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{fn}: '{name}' must have shape {shape_doc}, got {_shape_str(arr.shape)}")
    return arr.astype(np.int64)


def as_mask(fn: str, x: Any, *, like: FloatArray | None = None, like_name: str = "") -> BoolArray:
    """Convert a bool or 0/1 mask to bool; check its shape against ``like``."""
    arr = np.asarray(x)
    if arr.dtype != np.bool_:
        if not (np.issubdtype(arr.dtype, np.number)) or not np.all((arr == 0) | (arr == 1)):
            raise ValueError(f"{fn}: 'mask' must be boolean or contain only 0 and 1")
    if arr.ndim != 2:
        raise ValueError(f"{fn}: 'mask' must have shape [B, T], got {_shape_str(arr.shape)}")
    if like is not None:
        same_shape(fn, "mask", arr, like_name, like)
    return arr.astype(np.bool_)


def same_shape(fn: str, name: str, x: NDArray[Any], other_name: str, other: NDArray[Any]) -> None:
    if x.shape != other.shape:
        raise ValueError(
            f"{fn}: '{name}' has shape {_shape_str(x.shape)}, "
            f"expected {_shape_str(other.shape)} to match '{other_name}'"
        )


def finite(fn: str, name: str, x: FloatArray, where: BoolArray | None = None) -> None:
    """Refuse NaN/inf, looking only at valid positions when ``where`` is given."""
    values = x if where is None else x[where]
    if not np.all(np.isfinite(values)):
        if where is None:
            raise ValueError(f"{fn}: '{name}' contains NaN or inf")
        raise ValueError(f"{fn}: '{name}' contains NaN or inf at a valid (unmasked) position")


def no_empty_rows(fn: str, mask: BoolArray, mode: str) -> None:
    for i, row in enumerate(mask):
        if not row.any():
            raise ValueError(f"{fn}: 'mask' row {i} has no valid token; '{mode}' divides by the row length")


def not_empty(fn: str, mask: BoolArray) -> None:
    if not mask.any():
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
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{fn}: '{name}' must be > 0, got {value}")
    return float(value)


def non_negative(fn: str, name: str, value: float) -> float:
    _number(fn, name, value, ">= 0")
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"{fn}: '{name}' must be >= 0, got {value}")
    return float(value)


def unit_interval(fn: str, name: str, value: float) -> float:
    _number(fn, name, value, "in [0, 1]")
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{fn}: '{name}' must be in [0, 1], got {value}")
    return float(value)


def greater_than_one(fn: str, name: str, value: float) -> float:
    _number(fn, name, value, "> 1")
    if not (np.isfinite(value) and value > 1):
        raise ValueError(f"{fn}: '{name}' must be > 1, got {value}")
    return float(value)


def choice(fn: str, name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{fn}: '{name}' must be one of {tuple(choices)}, got {value!r}")
    return value


def group_size(fn: str, value: Any, n_rows: int, minimum: int) -> int:
    """A group size: an int >= ``minimum`` (``bool`` refused) that divides the ``n_rows`` rows of 'scores'."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{fn}: 'group_size' must be an int >= {minimum}, got {value}")
    if n_rows % value != 0:
        raise ValueError(f"{fn}: 'scores' has {n_rows} rows, not a multiple of group_size={value}")
    return int(value)
