"""Merge and GGUF export, verified by independent readers: a merged folder loads with plain transformers and
answers as the adapter on its base; a GGUF file is read back by transformers' GGUF loader (its own reader,
dequantizer and tokenizer conversion) and answers as the source model."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.helpers import save_tiny_adapter
from tests.test_model_families import gemma_3, llama_3_2, qwen_2_5, qwen_3
from thinktune.export import ExportError, export_gguf, fidelity, merge_adapter, permute_for_rope
from thinktune.models import _packaged_gguf, load_for_inference, load_tokenizer, resolve_model
from thinktune.recipe import load_recipe

QUESTIONS = ["What is 12 + 30?", "Name a prime number above 10.", "Say hello in French."]


@pytest.fixture(autouse=True, scope="module")
def gguf_parsed_once():
    """transformers' GGUF loader rebuilds gguf's tensor-name map for every module of the model (397 times for
    SmolLM2: 6 of a read-back's 16 s) and parses the file twice (config, then weights: 5 s more). The map depends on
    the architecture and block count alone, and a file unchanged on disk parses the same, so each is made once.
    What the reader reads and how it dequantizes stay its own."""
    import functools
    import os

    import gguf

    name_map, reader = gguf.get_tensor_name_map, gguf.GGUFReader
    parsed = functools.cache(lambda path, stamp: reader(path))
    gguf.get_tensor_name_map = functools.cache(name_map)
    gguf.GGUFReader = lambda path, *args: parsed(str(path), (os.stat(path).st_mtime_ns, os.stat(path).st_size))
    yield
    gguf.get_tensor_name_map, gguf.GGUFReader = name_map, reader


def greedy(model, tokenizer, questions=QUESTIONS, new_tokens=16) -> list[list[int]]:
    """Greedy continuations by Hugging Face ``generate`` (not thinktune's decoder): a reader of its own."""
    answers = []
    for q in questions:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]  # fmt: skip
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answers.append(out[0, ids.shape[1] :].tolist())
    return answers


def read_gguf(path):
    """The model and tokenizer transformers builds from the GGUF file alone."""
    kwargs = {"gguf_file": path.name}
    model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, **kwargs)


def test_permute_for_rope_is_the_inverse_of_the_readers_permutation():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weight = torch.randn(3 * 8, 5)  # 3 heads of 8
    back = LlamaTensorProcessor()._reverse_permute_weights(permute_for_rope(weight, 3).numpy(), 3, 3)
    assert torch.equal(torch.from_numpy(back), weight)


def test_merge_gives_a_plain_folder_that_answers_as_the_adapter_on_its_base(tmp_path, tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    save_tiny_adapter(tiny_model_dir, tmp_path / "adapter")
    merged = merge_adapter(tmp_path / "adapter", tmp_path / "merged")

    assert not (merged / "adapter_config.json").exists() and (merged / "model.safetensors").is_file()
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()  # transformers alone, no peft
    plain_tokenizer = AutoTokenizer.from_pretrained(merged)
    assert plain_tokenizer.chat_template == tokenizer.chat_template
    adapted, _ = load_for_inference(str(tmp_path / "adapter"), "cpu")
    base_answers = greedy(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), tokenizer)
    adapter_answers = greedy(adapted.eval(), tokenizer)
    assert greedy(plain, plain_tokenizer) == adapter_answers != base_answers  # the adapter changed the answers


def test_merge_refuses_a_folder_that_is_not_an_adapter(tmp_path, tiny_model_dir):
    with pytest.raises(ExportError, match="not a peft adapter folder"):
        merge_adapter(tiny_model_dir, tmp_path / "merged")


@pytest.fixture(scope="module")
def smollm2_f32(tmp_path_factory):
    """The packaged SmolLM2 GGUF converted in (thinktune's HF folder), then exported back out as f32."""
    out = tmp_path_factory.mktemp("gguf") / "smollm2.gguf"
    export_gguf("smollm2-135m-instruct", out, "f32", load_recipe(None))
    return out


@pytest.mark.slow
def test_a_packaged_gguf_converted_in_and_exported_out_round_trips(smollm2_f32):
    from gguf import GGUFReader

    source = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct"), dtype=torch.float32)
    model, tokenizer = read_gguf(smollm2_f32)
    ours, original = source.state_dict(), model.state_dict()
    assert ours.keys() == original.keys()
    assert all(torch.equal(ours[name], original[name]) for name in ours)  # every weight, to the bit

    # the tokenizer and its metadata are llama.cpp's own, key for key, as in the file SmolLM2 was packaged in
    packaged, exported = GGUFReader(_packaged_gguf("smollm2-135m-instruct")), GGUFReader(smollm2_f32)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.chat_template", "llama.block_count", "llama.embedding_length", "llama.attention.head_count",
                "llama.attention.head_count_kv", "llama.rope.freq_base", "llama.context_length"):  # fmt: skip
        assert exported.fields[key].contents() == packaged.fields[key].contents(), key
    text = "Solve 3x + 7 = 22.\n<answer>5</answer> café 12345"
    assert tokenizer(text)["input_ids"] == load_tokenizer(resolve_model("smollm2-135m-instruct"))(text)["input_ids"]


@pytest.mark.slow
def test_f32_and_f16_gguf_answer_as_the_source_and_q8_0_closely(smollm2_f32, tmp_path):
    source = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct"), dtype=torch.float32).eval()
    tokenizer = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    exact = fidelity(read_gguf(smollm2_f32)[0], source, tokenizer, QUESTIONS)
    assert exact == {"greedy_equal": 1.0, "top1_agreement": 1.0, "logprob_gap": 0.0}
    f16 = export_gguf("smollm2-135m-instruct", tmp_path / "f16.gguf", "f16")
    half = fidelity(read_gguf(f16)[0], source, tokenizer, QUESTIONS)
    assert half["top1_agreement"] >= 0.97 and half["logprob_gap"] < 0.01  # rounding moves a near-tie at most
    q8 = export_gguf("smollm2-135m-instruct", tmp_path / "q8" / "q8.gguf", "q8_0")  # its own Modelfile beside it
    assert q8.stat().st_size < 0.6 * f16.stat().st_size
    close = fidelity(read_gguf(q8)[0], source, tokenizer, QUESTIONS)
    assert close["top1_agreement"] >= 0.9 and close["logprob_gap"] < 0.1  # benchmarks/gguf_export.py measures it


def qwen_3_real_head_dim(vocab, special):
    """Qwen3 with head_dim 128, as every released Qwen3 has: transformers' GGUF reader does not read the
    head_dim the file records (``qwen3.attention.key_length``) and assumes 128."""
    return qwen_3(vocab, special, head_dim=128)


def tiny_with_bpe(build, folder):
    """A tiny random model of a family (``tests.test_model_families``) with SmolLM2's real BPE tokenizer, saved
    to ``folder``; returns the model and the tokenizer."""
    tokenizer = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    torch.manual_seed(0)
    special = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
               "bos_token_id": tokenizer.bos_token_id}  # fmt: skip
    source = build(len(tokenizer), special).eval()
    source.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return source, tokenizer


def assert_same_weights(source, model):
    ours, theirs = source.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[name], theirs[name]) for name in ours)


@pytest.mark.parametrize("build", [qwen_2_5, qwen_3_real_head_dim], ids=["qwen2", "qwen3"])
def test_qwen_family_ggufs_read_back_to_the_same_weights_and_answers(build, tmp_path):
    source, tokenizer = tiny_with_bpe(build, tmp_path / "model")
    model, _ = read_gguf(export_gguf(tmp_path / "model", tmp_path / "out" / "model.gguf", "f32"))
    assert_same_weights(source, model)
    assert greedy(model, tokenizer, new_tokens=8) == greedy(source, tokenizer, new_tokens=8)


def test_llama_3_2_rope_scaling_travels_as_llamacpps_rope_freqs(tmp_path):
    """transformers' GGUF reader does not apply rope_freqs, so the factors are checked against transformers' own
    llama3 frequencies, the way llama.cpp uses them (each base frequency divided by its factor)."""
    from gguf import GGUFReader

    source, _ = tiny_with_bpe(llama_3_2, tmp_path / "model")
    out = export_gguf(tmp_path / "model", tmp_path / "out" / "llama.gguf", "f32")
    (factors,) = [t for t in GGUFReader(out).tensors if t.name == "rope_freqs.weight"]
    head_dim, theta = 16, source.config.rope_parameters["rope_theta"]
    base = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    scaled = source.model.rotary_emb.inv_freq.double()
    assert not torch.allclose(scaled, base)  # the scaling changes some frequencies at this size
    torch.testing.assert_close(base / torch.from_numpy(factors.data.copy()).double(), scaled, rtol=1e-6, atol=0)
    assert_same_weights(source, read_gguf(out)[0])  # the rest reads back to the same weights


def test_an_ollama_modelfile_is_written_beside_the_gguf(smollm2_f32):
    modelfile = (smollm2_f32.parent / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{smollm2_f32.name}\n")
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>" in modelfile  # ChatML, in Ollama's template syntax
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM """Respond in the following format:\n<reasoning>' in modelfile  # the recipe's (xml) format


def test_the_modelfile_carries_the_recipes_few_shot_exchanges(tmp_path):
    from thinktune.data import PromptBuilder
    from thinktune.export import ollama_modelfile

    recipe = load_recipe("recipes/demo.yaml")
    tokenizer = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    modelfile = ollama_modelfile("demo.gguf", tokenizer, PromptBuilder.from_config(tokenizer, recipe.data))
    shot = recipe.data.fewshot[0]
    assert f'MESSAGE user """{shot.question}"""\nMESSAGE assistant """{shot.response}"""' in modelfile


def test_export_refuses_what_it_cannot_write_and_names_it(tmp_path, tiny):
    model, tokenizer = tiny
    torch.manual_seed(0)
    gemma = gemma_3(len(tokenizer), {"pad_token_id": tokenizer.pad_token_id})
    gemma.save_pretrained(tmp_path / "gemma")
    tokenizer.save_pretrained(tmp_path / "gemma")
    with pytest.raises(ExportError, match="'gemma3_text'"):
        export_gguf(tmp_path / "gemma", tmp_path / "g.gguf")
    with pytest.raises(ExportError, match="--type: 'q4'"):
        export_gguf(tmp_path / "gemma", tmp_path / "g.gguf", "q4")
    with pytest.raises(ExportError, match="ends in .gguf"):
        export_gguf(tmp_path / "gemma", tmp_path / "g.bin")
    assert not list(tmp_path.glob("g.*"))  # nothing half-written
