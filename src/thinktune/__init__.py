"""thinktune: teach small language models to reason with GRPO.

The Python API (see :mod:`thinktune.api`); everything else is internal.
"""

from thinktune.api import Summary, chat, evaluate, export_gguf, generate, load_recipe, merge, reward, train

__version__ = "0.1.0"
__all__ = ["Summary", "chat", "evaluate", "export_gguf", "generate", "load_recipe", "merge", "reward", "train"]
