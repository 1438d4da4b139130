"""The model families of the original systems, as tiny random-weight models built here (no downloads): Llama-3.2
(tied embeddings, llama3 rope scaling), Qwen2.5 (q/k/v bias), Qwen3 (q/k norms) and Gemma-3 (its own
architecture, served by the generic decoder). For each: greedy rollouts equal Hugging Face `generate`, sampled
log-probs equal a fresh forward, and one GRPO step trains it with LoRA and in full."""

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import tiny_recipe
from thinktune.logprobs import completion_logprobs
from thinktune.modeling import left_pad
from thinktune.models import load_for_inference
from thinktune.pipeline import train
from thinktune.rollout import generate
from thinktune.rollout.decoders import supports_fast_decode

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def llama_3_2(vocab, special):
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}  # fmt: skip
    config = LlamaConfig(vocab_size=vocab, **SHAPE, **special, tie_word_embeddings=True, rope_scaling=rope,
                         rope_theta=500000.0, max_position_embeddings=512, initializer_range=0.1)  # fmt: skip
    return LlamaForCausalLM(config)


def qwen_2_5(vocab, special):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, **SHAPE, **special, initializer_range=0.1))
    for layer in model.model.layers:  # the biases start at zero; make them count
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            proj.bias.data.normal_(0, 0.5)
    return model


def qwen_3(vocab, special, head_dim=16):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    model = Qwen3ForCausalLM(
        Qwen3Config(vocab_size=vocab, **SHAPE, **special, head_dim=head_dim, initializer_range=0.1)
    )
    for layer in model.model.layers:  # the q/k norms start at one; make them count
        layer.self_attn.q_norm.weight.data.normal_(1, 0.5)
        layer.self_attn.k_norm.weight.data.normal_(1, 0.5)
    return model


def gemma_3(vocab, special):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=vocab, **SHAPE, **special, head_dim=16, sliding_window=8,
                              max_position_embeddings=512, initializer_range=0.1)  # fmt: skip
    return Gemma3ForCausalLM(config)


FAMILIES = {
    "llama-3.2": (llama_3_2, True),
    "qwen-2.5": (qwen_2_5, True),
    "qwen-3": (qwen_3, True),
    "gemma-3": (gemma_3, False),
}  # builder, and whether the fast decoder serves it


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory, tiny):
    _, tokenizer = tiny
    build, fast = FAMILIES[request.param]
    torch.manual_seed(0)
    special = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
               "bos_token_id": tokenizer.bos_token_id}  # fmt: skip
    folder = tmp_path_factory.mktemp(request.param)
    build(len(tokenizer), special).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, fast


def prompts(tokenizer):
    texts = ["what is one plus two", "calculate three", "the cat is a dog and the dog is a cat"]
    return [tokenizer(t)["input_ids"] for t in texts]


def test_greedy_rollout_equals_hf_generate(family):
    folder, fast = family
    model, tokenizer = load_for_inference(str(folder), device="cpu")
    assert supports_fast_decode(model) == fast
    ours = generate(model, prompts(tokenizer), eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id,
                    max_new_tokens=12, greedy=True)  # fmt: skip
    ids, mask = left_pad(prompts(tokenizer), tokenizer.pad_token_id)
    hf = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                        pad_token_id=tokenizer.pad_token_id)[:, ids.shape[1] :]  # fmt: skip
    for row in range(ids.shape[0]):
        n = int(ours.completion_mask[row].sum())
        assert ours.completion_ids[row, :n].tolist() == hf[row, :n].tolist()


def test_sampled_logprobs_equal_a_fresh_forward(family):
    folder, _ = family
    model, tokenizer = load_for_inference(str(folder), device="cpu")
    sampling = dict(max_new_tokens=10, group_size=4, temperature=0.7, generator=torch.Generator().manual_seed(0))
    r = generate(model, prompts(tokenizer), eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id,
                 **sampling)  # fmt: skip
    with torch.no_grad():
        fresh, _ = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask, 0.7)
    mask = r.completion_mask.bool()
    assert torch.allclose(fresh[mask], r.logprobs[mask], atol=1e-4)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_one_grpo_step_trains_it(family, finetune, tmp_path, tiny_model_dir):
    folder, _ = family
    spread = "rewards=[{name: 'tests.user_rewards:length'}]"  # random words of random lengths: no group is flat
    recipe = tiny_recipe(tmp_path, tiny_model_dir, f"model.name={folder}", f"model.finetune={finetune}",
                         "train.steps=1", "train.learning_rate=0.01", "grpo.max_new_tokens=6", spread)  # fmt: skip
    train(recipe)
    final = tmp_path / "tiny" / "final"
    if finetune == "lora":
        adapter = load_file(final / "adapter_model.safetensors")
        assert any(t.abs().sum() > 0 for name, t in adapter.items() if "lora_B" in name)  # B left zero
    else:
        before, after = load_file(folder / "model.safetensors"), load_file(final / "model.safetensors")
        assert any(not torch.equal(before[name], after[name]) for name in before if name in after)
