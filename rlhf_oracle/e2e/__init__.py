"""The end-to-end miniature RLHF pipeline of the InstructGPT recipe (``rlhf-oracle demo``).

One concern per module, read in this order: :mod:`.config` (every knob, documented), :mod:`.task` (the synthetic
task and its hidden gold reward), :mod:`.tokenizer`, :mod:`.models`, :mod:`.sft`, :mod:`.reward_model`,
:mod:`.ppo` (the training loop: only calls into ``rlhf_oracle.torch_impl``), :mod:`.oracle` (the float64 NumPy
reference in the loop), :mod:`.plots` and :mod:`.run` (the driver and run folder).

Needs the ``e2e`` extra (torch, transformers, tokenizers, tqdm, matplotlib, rich).
"""

from .config import DemoConfig as DemoConfig
from .run import run_demo as run_demo

__all__ = ["DemoConfig", "run_demo"]
