"""thinktune memory: the architecture's parameter counts against real models, and how each setting moves the
estimate."""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM
from typer.testing import CliRunner

from tests.test_model_families import llama_3_2, qwen_2_5, qwen_3
from thinktune.cli import app
from thinktune.memory import Architecture, estimate
from thinktune.models import resolve_model
from thinktune.recipe import load_recipe


def counts(model):
    return sum(p.numel() for p in model.parameters())


def test_parameters_and_lora_parameters_match_the_packaged_model():
    path = resolve_model("smollm2-135m-instruct")
    arch = Architecture.of(AutoConfig.from_pretrained(path))
    model = AutoModelForCausalLM.from_pretrained(path)
    assert arch.parameters() == counts(model) == 134_515_008
    lora = get_peft_model(model, LoraConfig(r=16, target_modules="all-linear"))
    assert arch.lora_parameters(16) == sum(p.numel() for p in lora.parameters() if p.requires_grad)


@pytest.mark.parametrize("build, exact", [(llama_3_2, True), (qwen_2_5, False), (qwen_3, False)])
def test_parameters_of_the_seed_families(build, exact):
    torch.manual_seed(0)
    model = build(1000, {})
    arch = Architecture.of(model.config)
    if exact:
        assert arch.parameters() == counts(model)
    else:  # q/k/v biases (Qwen2) and q/k norms (Qwen3) are left out: under 1%
        assert 0.99 < arch.parameters() / counts(model) <= 1.0


def test_each_setting_moves_its_part():
    arch = Architecture(layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, head_dim=16, vocab=1000, tied=True)
    lora = estimate(load_recipe(None), arch)
    half = estimate(load_recipe(None, ["model.dtype=bfloat16"]), arch)
    assert half["weights"] == lora["weights"] / 2 == arch.parameters() * 2 / 1e9
    assert lora["trained state (grad + AdamW)"] == arch.lora_parameters(16) * 16 / 1e9
    full = estimate(load_recipe(None, ["model.finetune=full", "grpo.beta=0.04"]), arch)
    assert full["trained state (grad + AdamW)"] == pytest.approx(3 * full["weights"])
    assert full["reference weights"] == full["weights"]
    longer = estimate(load_recipe(None, ["grpo.max_new_tokens=1024"]), arch)
    assert longer["total"] > lora["total"]
    assert lora["total"] == pytest.approx(sum(v for k, v in lora.items() if k != "total"))


def test_a_token_budget_counts_as_the_rows_of_full_length_that_fit_it():
    arch = Architecture(layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, head_dim=16, vocab=1000, tied=True)

    def at(*overrides):
        return estimate(load_recipe(None, ["grpo.max_new_tokens=256", *overrides]), arch)

    assert at("grpo.micro_batch_tokens=600") == at("grpo.micro_batch_size=2")  # 600 // 256 = 2 rows
    assert at("grpo.micro_batch_tokens=100") == at("grpo.micro_batch_size=1")  # a longer row runs alone
    assert at("grpo.micro_batch_tokens=100000") == at()  # micro_batch_size (8) binds first
    assert at("grpo.micro_batch_tokens=600")["total"] < at()["total"]
    assert at("grpo.micro_batch_size=64") == at("grpo.micro_batch_size=32")  # a step has 4 x 8 rows: one pass


def test_the_command_reads_a_config_file_and_names_a_bad_one(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["memory", "recipes/demo.yaml", "--config", "recipes/models/llama-3.2-1b.json"])
    assert result.exit_code == 0 and "weights" in result.output and "total" in result.output
    weights = float(result.output.split("weights")[1].split("GB")[0])
    assert weights == pytest.approx(1_235_814_400 * 4 / 1e9, abs=0.01)  # Llama-3.2-1B's 1.24B weights in float32
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"hidden_size": 8}))
    result = runner.invoke(app, ["memory", "recipes/demo.yaml", "--config", str(bad)])
    assert result.exit_code == 2 and f"--config {bad}: not a model config" in result.output


def test_each_saver_moves_the_part_it_saves_and_only_that():
    arch = Architecture(layers=2, hidden=8, intermediate=16, heads=2, kv_heads=1, head_dim=4, vocab=32, tied=True)
    base = ["model.finetune=full", "grpo.micro_batch_size=2", "grpo.prompts_per_step=1", "grpo.group_size=2"]
    plain = estimate(load_recipe(None, base), arch)
    eight = estimate(load_recipe(None, [*base, "train.optimizer=adamw_8bit"]), arch)
    params = arch.parameters()
    assert plain["trained state (grad + AdamW)"] * 1e9 == params * 12  # float32 gradient and two moments
    assert eight["trained state (grad + AdamW)"] * 1e9 == params * 6  # float32 gradient, two 8-bit moments
    assert eight["weights"] == plain["weights"]
    checkpointed = estimate(load_recipe(None, [*base, "train.gradient_checkpointing=true"]), arch)
    # per token: 2 layers x 544 bytes of activations become 2 layer inputs (2 x 32 bytes) + one layer's 544, over
    # 2 rows x (256 prompt + 128 completion) tokens
    assert (plain["update pass"] - checkpointed["update pass"]) * 1e9 == pytest.approx((1088 - 608) * 2 * 384)
    assert checkpointed["weights"] == plain["weights"]
    lora, nf4 = (estimate(load_recipe(None, [*base[1:], *extra]), arch) for extra in ([], ["model.quantize=nf4"]))
    linear = arch.layers * sum(a * b for a, b in arch.linear_shapes())
    assert (lora["weights"] - nf4["weights"]) * 1e9 == pytest.approx(linear * (4 - 0.5625))
