"""Formula families added through :func:`rlhf_oracle.properties.registry.register`.

One module per family holds everything the oracle knows about its formulas: the hypothesis strategy of the maths
inputs, the extreme regime of the ``stability`` property, the reference gradient, the convention variants and
bug classes of the diagnosis, the tolerance with its reason, and the registry entry (paper, equation, docs page,
sympy derivations). ``docs/contributing.md`` walks through adding one (``preference.py``, the DPO loss, is the
worked example). Importing this package registers every family.
"""

from . import preference as preference

__all__ = ["preference"]
