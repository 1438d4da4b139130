"""thinktune: teach small language models to reason with GRPO."""

__version__ = "0.1.0"
