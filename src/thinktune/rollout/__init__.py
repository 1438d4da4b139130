"""Rollout engines: sample completions and their token log-probs."""

from thinktune.rollout.engine import Rollout, generate

__all__ = ["Rollout", "generate"]
