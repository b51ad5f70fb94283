"""Fixtures of the torch twin's tests: value checks are on at the start of every test and restored after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rlhf_oracle import torch_impl as ti


@pytest.fixture(autouse=True)
def _value_checks_on() -> Iterator[None]:
    ti.set_value_checks(True)
    yield
    ti.set_value_checks(True)
