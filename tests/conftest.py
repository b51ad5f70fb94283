"""Root test configuration: hypothesis profiles and the gpu / browser skips.

Profiles (defined once, in :mod:`rlhf_oracle.properties.profiles`): ``fast`` (default; CI-sized, derandomized so
that a red run reproduces) and ``thorough`` (500 examples per property), chosen with the environment variable
``RLHF_ORACLE_PROFILE``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from rlhf_oracle.properties import profiles

pytest_plugins = ["pytester"]  # the pytest-plugin tests in tests/properties drive a nested pytest

profiles.register()
settings.load_profile(os.environ.get(profiles.ENV_VAR, "fast"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA (none available)")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
