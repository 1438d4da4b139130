"""Attention in float32 on CPUs: torch's own call in float32, within bf16 rounding under autocast, and invisible in
what a run saves."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from thinktune import cpu_attention
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


def test_float32_equals_torchs_own_call(tiny_model_dir):
    """The tiny model groups its 4 query heads onto 2 key/value heads: read in place, the loss is torch's to the
    bit and the gradients (keys' and values' summed in another order) equal within float32 rounding."""
    plain_loss, plain = loss_and_grads(lora_model(tiny_model_dir, "sdpa"), autocast=False)
    ours_loss, ours = loss_and_grads(lora_model(tiny_model_dir, FLOAT32_ATTENTION), autocast=False)
    assert torch.equal(plain_loss, ours_loss)
    assert plain.keys() == ours.keys() and len(plain) == 2 * 7 * 2  # A and B of 7 linears in 2 layers
    assert all(torch.allclose(plain[name], ours[name], rtol=1e-5, atol=1e-7) for name in plain)


class Grouped(Layer):
    num_key_value_groups = 3


def test_grouped_heads_read_in_place_give_the_repeated_copies_answer(monkeypatch):
    """9 query heads on 3 key/value heads, a padded row and a boolean mask, as training passes them: the output and
    all three gradients as transformers' repeated copies give them; under autocast, that output rounded to bf16."""
    torch.manual_seed(0)
    q = torch.randn(2, 9, 6, 8, requires_grad=True)
    k, v = (torch.randn(2, 3, 6, 8, requires_grad=True) for _ in range(2))
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool).tril()
    mask[1, :, :, :2] = False
    mask[1, :, [0, 1], [0, 1]] = True  # padding queries see themselves
    upstream = torch.randn(2, 6, 9, 8)

    def run(attention):
        q.grad = k.grad = v.grad = None
        out, _ = attention(Grouped(), q, k, v, mask)
        (out * upstream).sum().backward()
        return out.detach(), q.grad, k.grad, v.grad

    theirs = run(sdpa_attention_forward)
    monkeypatch.setattr(cpu_attention, "sdpa_attention_forward", None)  # ours must not call transformers' copies
    ours = run(float32_sdpa)
    for mine, reference in zip(ours, theirs, strict=True):
        assert torch.allclose(mine, reference, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half, _ = float32_sdpa(Grouped(), q, k, v, mask)
    assert half.dtype == torch.bfloat16 and torch.equal(half, ours[0].bfloat16())


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
