"""Rollouts: sample completions and their token log-probs through a backend (only ``native`` so far)."""

from thinktune.rollout.backend import BACKENDS, NativeBackend, RolloutBackend, SamplingParams, make_backend
from thinktune.rollout.engine import Rollout, generate

__all__ = ["BACKENDS", "NativeBackend", "Rollout", "RolloutBackend", "SamplingParams", "generate", "make_backend"]
