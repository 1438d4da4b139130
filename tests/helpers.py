"""Checks and recipes several test modules share."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from thinktune.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def tiny_recipe(tmp_path, tiny_model_dir, *overrides):
    """GRPO on the tiny model: say 'yes' to twelve prompts (reward: the share of 'yes' words), 30 steps."""
    data = tmp_path / "prompts.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"question": f"say {w}", "answer": "yes"})
            for w in "one two three four five six seven eight nine zero cat dog".split()
        )
    )
    return load_recipe(
        None,
        [
            f"model.name={tiny_model_dir}",
            "model.finetune=full",
            "data.source=file",
            f"data.path={data}",
            "data.eval_size=4",
            "data.system_prompt=''",
            "rewards=[{name: 'tests.user_rewards:yes_fraction'}]",
            "grpo.group_size=8",
            "grpo.prompts_per_step=4",
            "grpo.max_new_tokens=8",
            "train.learning_rate=0.003",
            "train.steps=30",
            "eval.before=false",
            "eval.after=false",
            f"run.output_dir={tmp_path}",
            "run.name=tiny",
            *overrides,
        ],
    )


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def rewards(run_dir: Path) -> list[float]:
    return [record["reward"] for record in read_lines(run_dir / "metrics.jsonl")]


def assert_peft_adapter_loads(base_dir, adapter_dir) -> None:
    """Plain peft loads the adapter onto plain transformers; it changes the model's output, and to exactly what
    thinktune's own loader gives."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from thinktune.models import load_for_inference

    ids = torch.tensor([[1, 2, 3, 4, 5]])
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with torch.no_grad():
        before = base(ids).logits
        adapted = PeftModel.from_pretrained(base, adapter_dir).eval()
        after = adapted(ids).logits
        ours, _ = load_for_inference(str(adapter_dir), device="cpu")
        torch.testing.assert_close(after, ours(ids).logits)
    assert not torch.allclose(before, after), "the adapter does not change the model"


def save_tiny_adapter(tiny_model_dir, folder: Path) -> Path:
    """A LoRA adapter on the tiny model with random (not zero) weights, so it changes the model's answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from thinktune.models import load_tokenizer, save_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    save_model(get_peft_model(base, config), load_tokenizer(tiny_model_dir), folder)
    return Path(folder)


def build_trainer(tmp_path, tiny_model_dir, *overrides):
    """A GRPO trainer on :func:`tiny_recipe`, with its run folder and no tracker."""
    from thinktune.data import load_examples
    from thinktune.grpo.trainer import GRPOTrainer
    from thinktune.run_dir import RunDir
    from thinktune.tracking import make_tracker

    recipe = tiny_recipe(tmp_path, tiny_model_dir, *overrides)
    train_set, _, scorer = load_examples(recipe.data)
    run = RunDir(recipe)
    return GRPOTrainer.from_recipe(recipe, train_set, scorer, run, make_tracker([], run))
