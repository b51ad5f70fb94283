"""Entry point of the ``rlhf_oracle`` pytest plugin (``pytest11`` in pyproject.toml).

The plugin itself, :mod:`rlhf_oracle.properties.pytest_plugin`, needs torch and hypothesis (the ``torch`` extra).
Installing only the NumPy reference (``pip install rlhf-oracle``) registers this entry point too, and a pytest
plugin that fails to import breaks every test run of the project that installed it; so this module loads the
plugin only when its dependencies import, and registers nothing otherwise.
"""

from __future__ import annotations

try:
    import hypothesis  # noqa: F401
    import torch  # noqa: F401
except ImportError:  # the NumPy-only install: no fixture, no option
    pass
else:
    from rlhf_oracle.properties.pytest_plugin import (  # noqa: F401  (pytest collects these by name)
        pytest_addoption,
        pytest_configure,
        pytest_report_header,
        pytest_unconfigure,
        rlhf_oracle,
    )
