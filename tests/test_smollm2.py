"""The packaged SmolLM2-135M-Instruct: converts to a plain HF folder, trains two GRPO steps, saves a peft adapter."""

import json
from pathlib import Path

import pytest

from thinktune.config import load_recipe
from thinktune.models import resolve_model
from thinktune.pipeline import train

pytestmark = pytest.mark.slow


def test_packaged_model_resolves_to_a_plain_hf_folder():
    from transformers import AutoConfig

    folder = resolve_model("smollm2-135m-instruct")
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "llama" and config.num_hidden_layers == 30
    # dequantized float weights: no GGUF quantization marker (it makes Trainer-based tools refuse full fine-tuning)
    assert "quantization_config" not in json.loads((Path(folder) / "config.json").read_text())


def test_two_grpo_steps_on_smollm2(tmp_path):
    recipe = load_recipe(
        "recipes/demo.yaml",
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
    assert all(0 <= s["format"] <= 1 and s["seconds_rollout"] > 0 for s in steps)
    assert any(s["grad_norm"] > 0 for s in steps)
    assert [(s["grader_timeouts"], s["grader_errors"]) for s in steps] == [(1, 0), (1, 0)]
    adapter = tmp_path / "demo" / "final"
    assert (adapter / "adapter_config.json").is_file()
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    trained = load_file(adapter / "adapter_model.safetensors")
    assert any("lora_B" in name and w.abs().sum() > 0 for name, w in trained.items())  # B starts at zero
    base = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct"))
    PeftModel.from_pretrained(base, adapter)


def test_gsm_symbolic_sft_then_grpo_recipe_runs_scaled_down(tmp_path):
    recipe = load_recipe(
        "recipes/gsm_symbolic_sft_grpo.yaml",
        [
            "data.train_size=12",
            "data.eval_size=2",
            "sft.steps=2",
            "sft.batch_size=2",
            "grpo.group_size=2",
            "grpo.prompts_per_step=1",
            "grpo.max_new_tokens=12",
            "train.steps=1",
            "eval.max_new_tokens=12",
            f"run.output_dir={tmp_path}",
        ],
    )
    summary = train(recipe)
    run = tmp_path / "gsm_symbolic_sft_grpo"
    for name in ("eval_base.json", "eval_sft.json", "eval_after.json", "sft/config.json", "final/adapter_config.json"):
        assert (run / name).is_file(), name
    assert summary["sft"]["seconds"] > 0 and summary["seconds"] > 0


def test_cot_reward_model_recipe_runs_scaled_down(tmp_path):
    from thinktune.pairs import build_pairs
    from thinktune.preference import train_reward_model

    overrides = [
        "data.train_size=8",
        "data.eval_size=1",
        "pairs.limit=6",
        "pairs.max_new_tokens=8",
        f"reward_model.pairs={tmp_path}/cot_reward_model/pairs.jsonl",
        "reward_model.eval_pairs=2",
        "reward_model.steps=1",
        "reward_model.batch_size=2",
        "reward_model.max_length=192",
        f"run.output_dir={tmp_path}",
    ]
    recipe = load_recipe("recipes/cot_reward_model.yaml", overrides)
    assert len(build_pairs(recipe).read_text().splitlines()) == 6
    summary = train_reward_model(recipe)  # in the same run directory as the pairs
    assert 0 <= summary["pair_accuracy_after"] <= 1 and summary["pairs"]["held_out"] == 2
    assert (tmp_path / "cot_reward_model" / "reward_model" / "adapter_config.json").is_file()
