"""The packaged SmolLM2-135M-Instruct: converts to a plain HF folder, trains two GRPO steps, saves a peft adapter."""

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import RECIPES, assert_peft_adapter_loads
from thinktune.models import resolve_model
from thinktune.pipeline import train
from thinktune.recipe import load_recipe

pytestmark = pytest.mark.slow


def test_packaged_model_resolves_to_a_plain_hf_folder():
    from transformers import AutoConfig

    folder = resolve_model("smollm2-135m-instruct")
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "llama" and config.num_hidden_layers == 30
    # dequantized float weights: no GGUF quantization marker (it makes Trainer-based tools refuse full fine-tuning)
    assert "quantization_config" not in json.loads((Path(folder) / "config.json").read_text())


def test_converting_the_packaged_model_leaves_the_seeded_generator_alone(tmp_path, monkeypatch):
    """A run seeds torch before it loads the model: the first run on a machine converts the GGUF then, and must draw
    LoRA's initial weights from the same point of the stream as every later run (it did not: seed 0 of the demo
    trained differently on a fresh machine)."""
    monkeypatch.setenv("THINKTUNE_CACHE", str(tmp_path))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    folder = resolve_model("smollm2-135m-instruct")
    assert Path(folder).is_relative_to(tmp_path)  # converted here, not read from the cache
    assert torch.equal(torch.get_rng_state(), state)


def test_two_grpo_steps_on_smollm2(tmp_path):
    recipe = load_recipe(
        RECIPES / "demo.yaml",
        [
            "train.steps=2",
            "grpo.prompts_per_step=2",
            "grpo.group_size=4",
            "grpo.max_new_tokens=24",
            "eval.before=false",
            "eval.after=false",
            # the demo's rewards plus one that varies inside every group, so both steps have a gradient
            # and math-verify accuracy with one hostile answer per step: the step goes on and counts the time-out
            "rewards=[{name: format}, {name: task_score}, {name: 'tests.user_rewards:length', weight: 0.1},"
            " {name: 'tests.user_rewards:accuracy_with_one_power_tower'}]",
            f"run.output_dir={tmp_path}",
        ],
    )
    train(recipe)
    lines = (tmp_path / "demo" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    steps = [json.loads(line) for line in lines]
    assert all(s["format"] * 8 == int(s["format"] * 8) for s in steps)  # a share of 2 prompts x 4 completions
    assert any(s["grad_norm"] > 0 for s in steps)
    assert [(s["grader_timeouts"], s["grader_errors"]) for s in steps] == [(1, 0), (1, 0)]
    adapter = tmp_path / "demo" / "final"
    assert (adapter / "adapter_config.json").is_file()
    assert_peft_adapter_loads(resolve_model("smollm2-135m-instruct"), adapter)  # LoRA's B starts at zero
