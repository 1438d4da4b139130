"""Rollouts: sample completions and their token log-probs through a backend: ``native`` (thinktune's own decoder on
the policy's weights) or ``vllm`` (a vLLM engine the policy's weights are pushed into)."""

from thinktune.rollout.backend import (
    BACKENDS,
    NativeBackend,
    RolloutBackend,
    SamplingParams,
    evaluation_backend,
    make_backend,
)
from thinktune.rollout.engine import Rollout, generate

__all__ = [
    "BACKENDS",
    "NativeBackend",
    "Rollout",
    "RolloutBackend",
    "SamplingParams",
    "evaluation_backend",
    "generate",
    "make_backend",
]
