"""rlhf_oracle: a verified reference implementation and test oracle for PPO as used in RLHF.

Subpackages (imported explicitly, so that ``import rlhf_oracle.reference`` needs only NumPy):

- :mod:`rlhf_oracle.reference`: plain NumPy, float64, one readable function per formula (the ground truth).
- :mod:`rlhf_oracle.torch_impl`: the same functions on torch tensors, vectorised (independent of the reference).
- :mod:`rlhf_oracle.properties`: hypothesis strategies and checks that test any implementation.
"""

__version__ = "0.1.0"
