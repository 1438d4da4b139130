"""rollout.backend: vllm, on vLLM's CPU build (`make test-vllm` runs these in an environment of their own; without
vLLM they are skipped, saying so): greedy rollouts equal the native engine's on the packaged model, before and after
new weights are pushed; log-probs close to a fresh forward. (A GRPO run is in test_vllm_training.py: one engine
at a time.)"""

import gc
import importlib.util

import pytest
import torch

from thinktune.config import ModelConfig
from thinktune.logprobs import completion_logprobs
from thinktune.models import load_policy
from thinktune.rollout import SamplingParams, make_backend

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (make test-vllm)"),
]
QUESTIONS = ("Calculate 12 + 5.", "Calculate 7 - 3.", "What is 9 + 9?")


@pytest.fixture(scope="module")
def engines():
    torch.manual_seed(0)
    model, tokenizer = load_policy(ModelConfig(name="smollm2-135m-instruct", device="cpu"))
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_dict=True)[
            "input_ids"
        ]
        for q in QUESTIONS
    ]
    vllm = make_backend("vllm", model, tokenizer)
    yield model, prompts, make_backend("native", model, tokenizer), vllm
    del vllm.llm  # one engine at a time: the next test's run starts its own
    gc.collect()


def completions(rollout) -> list[list[int]]:
    return [rollout.completion_ids[r, : int(rollout.completion_mask[r].sum())].tolist() for r in range(len(QUESTIONS))]


def test_greedy_rollouts_equal_the_native_engine_before_and_after_a_weight_push(engines):
    model, prompts, native, vllm = engines
    greedy = SamplingParams(max_new_tokens=24, greedy=True)
    before = completions(native.generate(prompts, greedy))
    assert completions(vllm.generate(prompts, greedy)) == before
    for name, p in model.named_parameters():  # an update: adapters that change the answers
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    vllm.weights_changed()
    after = completions(native.generate(prompts, greedy))
    assert after != before and completions(vllm.generate(prompts, greedy)) == after


def test_sampled_logprobs_are_close_to_a_fresh_forward(engines):
    model, prompts, _, vllm = engines
    r = vllm.generate(prompts, SamplingParams(max_new_tokens=16, group_size=4, temperature=0.7))
    with torch.no_grad():
        fresh, _ = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask, 0.7)
    gap = (fresh - r.logprobs)[r.completion_mask.bool()].abs()
    assert gap.mean() < 1e-3 and gap.max() < 5e-2, (gap.mean().item(), gap.max().item())
