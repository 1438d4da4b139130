"""thinktune: teach small language models to reason with GRPO.

The Python API (see :mod:`thinktune.api`); everything else is internal.
"""

import logging

# peft imports bitsandbytes where it is installed, and on a CPU with avx512_bf16 its import warns that it could not
# fetch a 4-bit kernel from the model hub, in every run (no 4-bit layer needs it: nf4 falls back to its own kernel).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from thinktune.api import Summary, chat, evaluate, export_gguf, generate, load_recipe, merge, reward, train  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Summary", "chat", "evaluate", "export_gguf", "generate", "load_recipe", "merge", "reward", "train"]
