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


SCALED_DOWN = [
    "data.train_size=12",
    "data.eval_size=2",
    "sft.steps=2",
    "sft.batch_size=2",
    "grpo.group_size=2",
    "grpo.prompts_per_step=1",
    "grpo.max_new_tokens=12",
    "train.steps=1",
    "eval.max_new_tokens=12",
]


@pytest.mark.parametrize("name", ["tldr_length", "math_format_accuracy", "math_sft_grpo", "arithmetic_chain"])
def test_recipe_runs_scaled_down(tmp_path, name):
    summary = train(load_recipe(f"recipes/{name}.yaml", [*SCALED_DOWN, f"run.output_dir={tmp_path}"]))
    run = tmp_path / name
    assert (run / "final" / "adapter_config.json").is_file() and (run / "comparison.md").is_file()
    assert summary["median_step_seconds"] > 0 and summary["peak_rss_gb"] > 0.5  # a 135M model's weights alone
    rewards = {r.name for r in load_recipe(f"recipes/{name}.yaml").rewards}
    assert {f"reward/{r}" for r in rewards} <= summary["after"].keys()
    # summaries have no reference answer: no accuracy is reported rather than a meaningless 0
    assert ("accuracy" in summary["after"]) == (name != "tldr_length")


def test_sft_then_a_grpo_run_from_the_sft_checkpoint_evaluating_every_step(tmp_path):
    summary = train(load_recipe("recipes/gsm_symbolic_sft_grpo.yaml", [*SCALED_DOWN, f"run.output_dir={tmp_path}"]))
    run = tmp_path / "gsm_symbolic_sft_grpo"
    for name in ("eval_base.json", "eval_sft.json", "eval_after.json", "sft/config.json", "final/adapter_config.json"):
        assert (run / name).is_file(), name
    assert summary["sft"]["seconds"] > 0 and summary["seconds"] > 0

    overrides = [
        *SCALED_DOWN,
        f"model.name={run / 'sft'}",
        "train.steps=2",
        "eval.every=1",
        f"run.output_dir={tmp_path}",
    ]
    train(load_recipe("recipes/sft_checkpoint_grpo.yaml", overrides))
    curve = [
        json.loads(line) for line in (tmp_path / "sft_checkpoint_grpo" / "eval_curve.jsonl").read_text().splitlines()
    ]
    assert [(c["step"], c["label"]) for c in curve] == [(0, "before"), (1, "step1"), (2, "after")]
    assert all(0 <= c["accuracy"] <= 1 and 0 <= c["format_accuracy"] <= 1 for c in curve)


def test_cot_reward_model_recipe_runs_its_three_stages_scaled_down(tmp_path):
    overrides = [
        "data.train_size=8",
        "data.eval_size=1",
        "pairs.limit=6",
        "pairs.max_new_tokens=8",
        "reward_model.eval_pairs=2",
        "reward_model.steps=1",
        "reward_model.batch_size=2",
        "reward_model.max_length=192",
        "grpo.group_size=2",
        "grpo.prompts_per_step=1",
        "grpo.max_new_tokens=8",
        "train.steps=1",
        f"run.output_dir={tmp_path}",
    ]
    summary = train(load_recipe("recipes/cot_reward_model.yaml", overrides))
    run = tmp_path / "cot_reward_model"
    assert len((run / "pairs.jsonl").read_text().splitlines()) == 6
    assert 0 <= summary["reward_model"]["pair_accuracy_after"] <= 1
    assert summary["reward_model"]["pairs"]["held_out"] == 2
    assert (run / "reward_model" / "adapter_config.json").is_file() and (run / "final").is_dir()
    # the before/after comparison reports the learned reward model's score
    assert (
        "reward/reward_model" in summary["after"] and "| reward/reward_model |" in (run / "comparison.md").read_text()
    )
