"""Take a trained model out of thinktune: merge an adapter into a plain Hugging Face folder, or write one GGUF
file for llama.cpp and Ollama (with an Ollama ``Modelfile`` beside it).

The GGUF file follows llama.cpp's own converter: the architecture's hyper-parameters under ``<arch>.*``, the
tensors under llama.cpp's names (``gguf``'s tensor map), Llama's q/k projections permuted into llama.cpp's rotary
layout, 1-D tensors (norms, biases) in float32, and the tokenizer as a GPT-2-style BPE vocabulary with its merges,
special tokens and chat template.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from thinktune.config import expand_path
from thinktune.models import ModelError, load_for_inference, save_model
from thinktune.outputs import refuse_existing, writing

# The families written, by model_type (llama.cpp calls them the same), whose GGUF transformers can read back.
ARCHITECTURES = ("llama", "qwen2", "qwen3")
QUANTIZATIONS = ("f32", "f16", "q8_0")


class ExportError(ModelError):
    """A model, adapter or setting the export cannot handle, naming it."""


def merged_model(model_or_adapter: str | Path):
    """The model in float32 with any LoRA adapter folded into its weights, and its tokenizer."""
    model, tokenizer = load_for_inference(str(model_or_adapter), "cpu", "float32")
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.eval(), tokenizer


def merge_adapter(adapter: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Fold the LoRA ``adapter`` into its base and save a plain Hugging Face folder at ``out`` (config,
    safetensors weights, tokenizer and chat template), loadable by ``AutoModelForCausalLM`` alone. An existing
    non-empty ``out`` is refused unless ``overwrite``; a run folder always is."""
    adapter, out = Path(expand_path(str(adapter))), Path(expand_path(str(out)))
    if not (adapter / "adapter_config.json").is_file():
        raise ExportError(f"{adapter} is not a peft adapter folder (no adapter_config.json); nothing to merge")
    refuse_existing(out, overwrite, "merge output")
    model, tokenizer = merged_model(adapter)
    save_model(model, tokenizer, out)  # whole or absent: written beside it, then renamed
    return out


def permute_for_rope(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face's rotary layout (each head's halves rotated together) -> llama.cpp's (adjacent pairs), for
    Llama's q and k projections, as llama.cpp's converter does.

    >>> permute_for_rope(torch.arange(4.0)[:, None], heads=1)[:, 0].tolist()  # rows 0,1 | 2,3 -> pairs (0,2) (1,3)
    [0.0, 2.0, 1.0, 3.0]
    """
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def tensor_data(name: str, tensor: torch.Tensor, quantization: str):
    """The tensor as written: (array, GGML type). Norms and biases stay float32, as in llama.cpp's files."""
    from gguf import GGMLQuantizationType, quantize

    array = tensor.detach().float().numpy()
    if array.ndim == 1 or quantization == "f32":
        return array, GGMLQuantizationType.F32
    if quantization == "f16":
        return array.astype(np.float16), GGMLQuantizationType.F16
    if array.shape[-1] % 32:
        raise ExportError(f"q8_0: {name} has rows of {array.shape[-1]} values, not a multiple of the 32-value block")
    return quantize(array, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0


def gguf_architecture(config) -> str:
    arch = config.model_type
    if arch not in ARCHITECTURES:
        raise ExportError(
            f"GGUF export supports {list(ARCHITECTURES)} models; this one is {arch!r}. "
            "Merge it (thinktune merge) and convert the folder with llama.cpp's convert_hf_to_gguf.py"
        )
    rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope_type != "default" and not (arch == "llama" and rope_type == "llama3"):
        raise ExportError(
            f"GGUF export: rope scaling {rope_type!r} (config rope_parameters) is not written yet; only Llama-3's "
            "llama3 scaling and models without rope scaling export"
        )
    return arch


def llama3_rope_factors(config) -> torch.Tensor:
    """Llama-3's rope scaling as llama.cpp carries it: a ``rope_freqs`` tensor that divides each rotary frequency.

    Wavelengths shorter than ``original_max_position_embeddings / high_freq_factor`` keep their frequency, longer
    than ``... / low_freq_factor`` are divided by ``factor``, and those between are interpolated smoothly.

    >>> from types import SimpleNamespace
    >>> rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
    ...         "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    >>> factors = llama3_rope_factors(SimpleNamespace(rope_parameters=rope, head_dim=8))  # wavelengths 6, 63, 628, 6283
    >>> [round(f, 3) for f in factors.tolist()]  # 63 lies between 64/4 and 64/1: 1 / ((1 - s)/8 + s), s = 0.0062
    [1.0, 7.667, 8.0, 8.0]
    """
    rope = config.rope_parameters
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    inv_freq = 1.0 / rope["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    context, factor = rope["original_max_position_embeddings"], rope["factor"]
    low, high = rope["low_freq_factor"], rope["high_freq_factor"]
    wavelength = 2 * math.pi / inv_freq
    smooth = (context / wavelength - low) / (high - low)
    factors = 1 / ((1 - smooth) / factor + smooth)
    factors = torch.where(wavelength < context / high, 1.0, factors)
    return torch.where(wavelength > context / low, factor, factors).float()


def write_hyperparameters(writer, config, name: str, quantization: str) -> None:
    from gguf import LlamaFileType

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_name(name)
    writer.add_type("model")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    file_types = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0}
    writer.add_file_type(file_types[quantization])


def pre_tokenizer(arch: str, vocab_size: int) -> str:
    """The name llama.cpp knows the tokenizer's pre-tokenizer by (the regex that splits text before BPE).

    llama.cpp's converter recognises a tokenizer family by hashing its output on a test text; these are the
    families of the models thinktune trains: Qwen2/Qwen3's, Llama-3's (128,256 tokens) and SmolLM's (49,152).

    >>> pre_tokenizer("qwen3", 151936), pre_tokenizer("llama", 128256), pre_tokenizer("llama", 49152)
    ('qwen2', 'llama-bpe', 'smollm')
    """
    if arch in ("qwen2", "qwen3"):
        return "qwen2"
    return {128256: "llama-bpe", 49152: "smollm"}.get(vocab_size, "default")


def write_tokenizer(writer, tokenizer, arch: str) -> None:
    """A GPT-2-style BPE vocabulary: tokens by id with their kinds, merges, special ids and the chat template."""
    from gguf import SpecialVocab, TokenType

    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = json.loads(backend.to_str())["model"] if backend is not None else {}
    if model.get("type") != "BPE":
        raise ExportError(f"GGUF export writes BPE tokenizers; this one is {model.get('type') or type(tokenizer)}")
    vocab = tokenizer.get_vocab()
    added = {token.content: token for token in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    by_id = {i: t for t, i in vocab.items()}
    for i in range(max(by_id) + 1):
        token = by_id.get(i, f"[PAD{i}]")
        tokens.append(token)
        if token in added:
            types.append(TokenType.CONTROL if added[token].special else TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL if i in by_id else TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(arch, len(tokens)))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        special = SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    special.chat_template = tokenizer.chat_template or special.chat_template
    special.add_to_gguf(writer, quiet=True)


def write_gguf(model, tokenizer, out: Path, quantization: str, name: str) -> None:
    from gguf import MODEL_ARCH_NAMES, GGUFWriter, get_tensor_name_map

    config = model.config
    arch = gguf_architecture(config)
    arch_id = next(key for key, value in MODEL_ARCH_NAMES.items() if value == arch)
    names = get_tensor_name_map(arch_id, config.num_hidden_layers)
    writer = GGUFWriter(str(out), arch)
    write_hyperparameters(writer, config, name, quantization)
    write_tokenizer(writer, tokenizer, arch)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses the embedding when there is no output tensor
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise ExportError(f"GGUF export: no llama.cpp name for the tensor {hf_name!r} of a {arch} model")
        if arch == "llama" and base.endswith(("q_proj", "k_proj")) and suffix == "weight":
            kv = base.endswith("k_proj")
            tensor = permute_for_rope(tensor, config.num_key_value_heads if kv else config.num_attention_heads)
        array, ggml_type = tensor_data(hf_name, tensor, quantization)
        writer.add_tensor(f"{gguf_name}.{suffix}", array, raw_dtype=ggml_type)
    if (getattr(config, "rope_parameters", None) or {}).get("rope_type") == "llama3":
        writer.add_tensor("rope_freqs.weight", llama3_rope_factors(config).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def ollama_modelfile(gguf_name: str, tokenizer, prompts=None) -> str:
    """An Ollama ``Modelfile`` for the GGUF file beside it: the chat template in Ollama's syntax where the model
    uses ChatML (``<|im_start|>``) or Llama-3 headers (otherwise Ollama reads the GGUF's own template), the
    end-of-turn tokens as stops, and, given the recipe's ``PromptBuilder``, its system prompt and few-shot
    exchanges, so the model is prompted as it was trained."""
    template = tokenizer.chat_template or ""
    lines = [f"FROM ./{gguf_name}", ""]
    if "<|im_start|>" in template:
        turn = "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        lines += [
            'TEMPLATE """{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
            "{{- range .Messages }}" + turn + '{{ end }}<|im_start|>assistant\n"""',
            'PARAMETER stop "<|im_end|>"',
        ]
    elif "<|start_header_id|>" in template:
        turn = "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        lines += [
            'TEMPLATE """<|begin_of_text|>{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n'
            "{{ .System }}<|eot_id|>{{ end }}{{- range .Messages }}" + turn
            + '{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"""',
            'PARAMETER stop "<|eot_id|>"',
        ]  # fmt: skip
    if tokenizer.eos_token and tokenizer.eos_token not in "\n".join(lines):
        lines.append(f'PARAMETER stop "{tokenizer.eos_token}"')
    if prompts is not None:
        lines += [f'SYSTEM """{prompts.system_prompt}"""'] if prompts.system_prompt else []
        for question, response in prompts.fewshot:
            lines += [f'MESSAGE user """{question}"""', f'MESSAGE assistant """{response}"""']
    return "\n".join(lines) + "\n"


def export_gguf(
    model_or_adapter: str | Path, out: str | Path, quantization: str = "f16", recipe=None, overwrite: bool = False
) -> Path:
    """Write ``model_or_adapter`` (adapters merged first) as the GGUF file ``out`` and an Ollama ``Modelfile``
    beside it (with the recipe's system prompt when a recipe is given). Returns the GGUF path. An existing GGUF
    file or Modelfile is refused unless ``overwrite``."""
    from thinktune.data import PromptBuilder

    if quantization not in QUANTIZATIONS:
        raise ExportError(f"--type: {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    out = Path(expand_path(str(out)))
    if out.suffix != ".gguf":
        raise ExportError(f"{out}: a GGUF file name ends in .gguf")
    for target in (out, out.parent / "Modelfile"):
        refuse_existing(target, overwrite, "export output")
    model, tokenizer = merged_model(model_or_adapter)
    gguf_architecture(model.config)  # refuse before writing anything
    partial = out.with_name(out.name + ".partial")
    try:
        with writing(out):
            out.parent.mkdir(parents=True, exist_ok=True)
            write_gguf(model, tokenizer, partial, quantization, Path(str(model_or_adapter)).name)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out)
    prompts = PromptBuilder.from_config(tokenizer, recipe.data) if recipe else None
    with writing(out.parent / "Modelfile"):
        (out.parent / "Modelfile").write_text(ollama_modelfile(out.name, tokenizer, prompts))
    return out


@torch.no_grad()
def fidelity(model, source, tokenizer, questions: list[str], new_tokens: int = 16) -> dict:
    """How closely ``model`` (e.g. read back from a GGUF file) follows ``source``, measured with Hugging Face's
    ``generate`` and forward passes (none of thinktune's decoder): the questions whose greedy answers are equal,
    and, on the source's own greedy answers, the share of positions where both pick the same next token and the
    mean absolute gap between their log-probs of the tokens chosen."""
    equal, same, gaps = 0, [], []
    for question in questions:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)["input_ids"]  # fmt: skip
        answers = [m.generate(prompt, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
                   for m in (model, source)]  # fmt: skip
        equal += torch.equal(*answers)
        ids = answers[1]
        chosen = ids[0, prompt.shape[1] :, None]
        ours, theirs = (m(ids).logits[0, prompt.shape[1] - 1 : -1].log_softmax(-1) for m in (model, source))
        same += (ours.argmax(-1) == theirs.argmax(-1)).tolist()
        gaps += (ours.gather(-1, chosen) - theirs.gather(-1, chosen)).abs()[:, 0].tolist()
    return {"greedy_equal": equal / len(questions), "top1_agreement": sum(same) / len(same),
            "logprob_gap": sum(gaps) / len(gaps)}  # fmt: skip
