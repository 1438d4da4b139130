"""Attention in float32 on CPUs: torch's own call in float32, within bf16 rounding under autocast, and invisible in
what a run saves."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from thinktune.config import ModelConfig
from thinktune.cpu_attention import FLOAT32_ATTENTION, float32_sdpa
from thinktune.models import load_policy
from thinktune.sft import completion_loss

PROMPTS = [[2, 5, 9, 11], [2, 7]]
TARGETS = [[12, 13, 3], [14, 15, 16, 17, 3]]


class Layer(torch.nn.Module):
    is_causal = True


def lora_model(model_dir, attention: str):
    """The tiny model with LoRA whose B is non-zero, so that the adapters change the output."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.config._attn_implementation = attention
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    return model


def loss_and_grads(model, autocast: bool):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = completion_loss(model, PROMPTS, TARGETS, pad_id=0)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_float32_is_torchs_own_call_to_the_bit(tiny_model_dir):
    plain_loss, plain = loss_and_grads(lora_model(tiny_model_dir, "sdpa"), autocast=False)
    ours_loss, ours = loss_and_grads(lora_model(tiny_model_dir, FLOAT32_ATTENTION), autocast=False)
    assert torch.equal(plain_loss, ours_loss)
    assert plain.keys() == ours.keys() and len(plain) == 2 * 7 * 2  # A and B of 7 linears in 2 layers
    assert all(torch.equal(plain[name], ours[name]) for name in plain)


def test_under_autocast_the_loss_and_gradients_stay_near_float32s(tiny_model_dir):
    """bf16 matmuls with float32 attention stay as close to the float32 loss and gradients as torch's bf16
    attention does."""
    exact_loss, exact = loss_and_grads(lora_model(tiny_model_dir, "sdpa"), autocast=False)
    for attention in (FLOAT32_ATTENTION, "sdpa"):
        loss, grads = loss_and_grads(lora_model(tiny_model_dir, attention), autocast=True)
        assert abs(loss - exact_loss) < 0.02 * exact_loss
        for name, grad in grads.items():
            cosine = torch.nn.functional.cosine_similarity(grad.flatten(), exact[name].flatten(), dim=0)
            assert grad.dtype == torch.float32 and cosine > 0.99, (name, attention, cosine)


def test_low_precision_inputs_get_float32_attention_in_their_own_dtype():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 8) for _ in range(3))
    exact, _ = float32_sdpa(Layer(), q, k, v, None)
    assert exact.dtype == torch.float32
    half, _ = float32_sdpa(Layer(), q.bfloat16(), k.bfloat16(), v.bfloat16(), None)
    # the same bf16 inputs computed in float32: only the final rounding to bf16 is left
    widened, _ = float32_sdpa(Layer(), q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), None)
    assert half.dtype == torch.bfloat16 and torch.equal(half, widened.bfloat16())
    step = (q[:, :, :1].bfloat16(), k.bfloat16(), v.bfloat16(), None)  # a decode step: torch's own call
    assert torch.equal(float32_sdpa(Layer(), *step)[0], sdpa_attention_forward(Layer(), *step)[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # rotary leaves queries in float32, values in bf16
        mixed, _ = float32_sdpa(Layer(), q, k, v.bfloat16(), None)
    assert mixed.dtype == torch.bfloat16 and torch.allclose(mixed.float(), exact, atol=0.05)


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_a_policy_trains_with_it_and_saves_plain_folders(tmp_path, tiny_model_dir, finetune):
    model, _ = load_policy(ModelConfig(name=tiny_model_dir, device="cpu", finetune=finetune))
    assert model.config._attn_implementation == FLOAT32_ATTENTION
    ids = torch.tensor([[2, 5, 9, 11, 12]])
    with torch.no_grad():
        ours = model(ids).logits
    base = model.get_base_model() if finetune == "lora" else model
    base.save_pretrained(tmp_path / "base")
    config = (tmp_path / "base" / "config.json").read_text()
    assert "thinktune" not in config and json.loads(config).get("_attn_implementation") is None
    if finetune == "lora":
        model.save_pretrained(tmp_path / "adapter")
        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter")
    else:
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    assert plain.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, ours)
