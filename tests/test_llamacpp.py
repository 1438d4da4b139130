"""The GGUF files thinktune exports, run by llama.cpp itself (llama-cpp-python, which `make test` builds): its own
tokenizer, chat template and forward pass against the Hugging Face source."""

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.test_export import QUESTIONS, greedy, qwen_3_real_head_dim, tiny_with_bpe
from tests.test_model_families import llama_3_2, qwen_2_5
from thinktune.export import export_gguf
from thinktune.models import load_tokenizer, resolve_model

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed (make test builds it)"
)


def llama(path, **kwargs):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False, **kwargs)


@pytest.mark.slow
def test_llamacpp_tokenizes_templates_and_answers_as_the_source(tmp_path):
    path = resolve_model("smollm2-135m-instruct")
    tokenizer = load_tokenizer(path)
    source = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model = llama(export_gguf("smollm2-135m-instruct", tmp_path / "smollm2.gguf", "f32"))
    for text in ["Solve 3x + 7 = 22.\n<answer>5</answer> café 12345", "Tabs\tand  spaces, 1234567 digits!"]:
        assert model.tokenize(text.encode(), add_bos=False, special=True) == tokenizer(text)["input_ids"]
    # llama.cpp renders the chat template stored in the file; Hugging Face the tokenizer's own
    replies = [model.create_chat_completion(messages=[{"role": "user", "content": q}], temperature=0.0, max_tokens=24)
               for q in QUESTIONS]  # fmt: skip
    expected = [tokenizer.decode(ids, skip_special_tokens=True) for ids in greedy(source, tokenizer, new_tokens=24)]
    assert [r["choices"][0]["message"]["content"] for r in replies] == expected


@pytest.mark.parametrize("build", [llama_3_2, qwen_2_5, qwen_3_real_head_dim], ids=["llama-3.2", "qwen2.5", "qwen3"])
def test_llamacpps_logits_equal_the_sources_for_each_family(build, tmp_path):
    source, tokenizer = tiny_with_bpe(build, tmp_path / "model")
    ids = tokenizer("The quick brown fox jumps over the lazy dog, then adds 12 + 30 = 42 twice over.")["input_ids"]
    model = llama(export_gguf(tmp_path / "model", tmp_path / "model.gguf", "f32"), logits_all=True)
    model.eval(ids)
    theirs = torch.tensor(model.scores[: len(ids)])
    with torch.no_grad():
        ours = source(torch.tensor([ids])).logits[0]
    assert (theirs - ours).abs().max() < 1e-2 and torch.equal(theirs.argmax(-1), ours.argmax(-1))
    if build is llama_3_2:  # llama3 rope scaling (rope_freqs) is applied: without it the logits are further off
        source.config.rope_parameters = {
            "rope_type": "default",
            "rope_theta": source.config.rope_parameters["rope_theta"],
        }
        plain = type(source)(source.config)
        plain.load_state_dict(source.state_dict(), strict=False)
        with torch.no_grad():
            unscaled = plain.eval()(torch.tensor([ids])).logits[0]
        assert (theirs - unscaled).abs().max() > 10 * (theirs - ours).abs().max()
