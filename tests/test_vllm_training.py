"""A GRPO run whose rollouts vLLM samples raises its reward (`make test-vllm`; skipped without vLLM)."""

import importlib.util

import pytest

from tests.conftest import build_tiny_model
from tests.helpers import read_lines, tiny_recipe
from thinktune.pipeline import train

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (make test-vllm)"),
]


def test_a_grpo_run_sampled_by_vllm_raises_its_reward(tmp_path):
    model = build_tiny_model(tmp_path / "model", hidden=256)  # head size 64: vLLM's CPU attention has no 16
    train(tiny_recipe(tmp_path, str(model), "rollout.backend=vllm", "train.steps=30"))
    records = read_lines(tmp_path / "tiny" / "metrics.jsonl")
    rewards = [r["reward"] for r in records]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.2, rewards
    assert max(r["logprob_mismatch"] for r in records) < 1e-2, [round(r["logprob_mismatch"], 4) for r in records]
