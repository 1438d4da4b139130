"""GRPO learns: a tiny model trained from scratch raises a simple reward within a few dozen steps."""

import json

import pytest

from tests.helpers import assert_peft_adapter_loads, rewards, tiny_recipe
from thinktune.pipeline import train


def test_grpo_raises_the_reward(tmp_path, tiny_model_dir):
    train(tiny_recipe(tmp_path, tiny_model_dir))
    r = rewards(tmp_path / "tiny")
    first, last = sum(r[:5]) / 5, sum(r[-5:]) / 5
    assert first < 0.2, r
    assert last > first + 0.3, r


def test_lora_with_kl_learns_and_saves_a_peft_adapter(tmp_path, tiny_model_dir):
    train(
        tiny_recipe(
            tmp_path,
            tiny_model_dir,
            "model.finetune=lora",
            "grpo.beta=0.01",
            "train.learning_rate=0.01",
            "grpo.loss=sequence",
            "grpo.iterations=2",
        )
    )
    r = rewards(tmp_path / "tiny")
    assert sum(r[-5:]) / 5 > sum(r[:5]) / 5 + 0.2, r
    metrics = [json.loads(line) for line in (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["kl"] > 0
    assert_peft_adapter_loads(tiny_model_dir, tmp_path / "tiny" / "final")


@pytest.mark.parametrize(
    "loss",
    [
        ("grpo.loss=cispo", "grpo.epsilon_high=4.0", "grpo.top_entropy_quantile=0.5"),  # CISPO on the uncertain half
        ("grpo.importance_sampling=sequence", "grpo.iterations=2", "grpo.epsilon=0.01"),  # GSPO
    ],
    ids=["cispo-top-entropy", "gspo"],
)
def test_the_newer_losses_learn_too(tmp_path, tiny_model_dir, loss):
    train(tiny_recipe(tmp_path, tiny_model_dir, *loss))
    r = rewards(tmp_path / "tiny")
    assert sum(r[-5:]) / 5 > sum(r[:5]) / 5 + 0.3, r
