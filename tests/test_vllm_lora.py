"""rollout.vllm_weights: lora, on vLLM's CPU build (`make test-vllm`): the policy's adapter is handed to vLLM's LoRA
support instead of merged weights, and greedy rollouts equal the native engine's before and after an update. In a
file of its own: one vLLM engine per process at a time."""

import importlib.util

import pytest
import torch

from tests.test_vllm import QUESTIONS, completions
from thinktune.config import ModelConfig, RolloutConfig
from thinktune.models import ModelError, load_policy
from thinktune.rollout import SamplingParams, make_backend

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (make test-vllm)"),
]
LORA = RolloutConfig(backend="vllm", vllm_weights="lora")


def change_adapters(model, seed: int) -> None:
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)


def test_greedy_rollouts_through_vllms_lora_support_equal_the_native_engine(tmp_path):
    model, tokenizer = load_policy(ModelConfig(name="smollm2-135m-instruct", device="cpu"))
    change_adapters(model, 0)  # adapters that matter from the start
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             return_dict=True)["input_ids"] for q in QUESTIONS]  # fmt: skip
    native, vllm = make_backend("native", model, tokenizer), make_backend(LORA, model, tokenizer)
    greedy = SamplingParams(max_new_tokens=24, greedy=True)
    before = completions(native.generate(prompts, greedy))
    assert completions(vllm.generate(prompts, greedy)) == before
    change_adapters(model, 1)  # an update
    vllm.weights_changed()
    after = completions(native.generate(prompts, greedy))
    assert after != before and completions(vllm.generate(prompts, greedy)) == after


def test_lora_weights_need_a_lora_policy():
    model, tokenizer = load_policy(ModelConfig(name="smollm2-135m-instruct", device="cpu", finetune="full"))
    with pytest.raises(ModelError, match="vllm_weights: lora needs a LoRA policy"):
        make_backend(LORA, model, tokenizer)
