"""The packaged SmolLM2-135M-Instruct: converts to a plain HF folder, trains two GRPO steps, saves a peft adapter."""

import json

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
            f"run.output_dir={tmp_path}",
        ],
    )
    train(recipe)
    lines = (tmp_path / "demo" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    step = json.loads(lines[-1])
    assert step["grad_norm"] > 0 and 0 <= step["format"] <= 1
    adapter = tmp_path / "demo" / "final"
    assert (adapter / "adapter_config.json").is_file()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct"))
    PeftModel.from_pretrained(base, adapter)
