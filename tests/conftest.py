"""Shared fixtures: a tiny Llama model with a tokenizer trained on the fly (seconds, no downloads)."""

from __future__ import annotations

import pytest
import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)
WORDS = (
    "yes no maybe the a cat dog answer is reasoning think <reasoning> </reasoning> <answer> </answer> "
    "plus minus equals what calculate one two three four five six seven eight nine zero "
    + " ".join(str(i) for i in range(100))
)


def build_tiny_model(folder, hidden: int = 64, layers: int = 2, seed: int = 0):
    """Save a ~0.1M-parameter Llama and a word-level tokenizer (with a chat template) to ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant"]
    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.train_from_iterator([WORDS] * 3, trainers.WordLevelTrainer(special_tokens=specials))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    from tokenizers import decoders

    tokenizer.backend_tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
        initializer_range=0.1,  # big enough that adapters alone can make a token likely
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    from thinktune.models import load_for_inference

    model, tokenizer = load_for_inference(tiny_model_dir, device="cpu")
    return model, tokenizer
