"""A learned reward: the score of a sequence-classification model with one label."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from thinktune.rewards.registry import register_reward


@functools.lru_cache(maxsize=2)
def load_reward_model(path: str):
    """(model, tokenizer) from an HF folder or a peft adapter folder over one; the head must have one label."""
    from transformers import AutoModelForSequenceClassification

    from thinktune.models import adapter_base, attach_adapter, resolve_model

    folder = Path(path)
    if (folder / "adapter_config.json").is_file():
        # The base's own config may declare another label count; the adapter's score head has one.
        base = AutoModelForSequenceClassification.from_pretrained(adapter_base(folder), num_labels=1)
        model = attach_adapter(base, folder)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(resolve_model(path))
    labels = model.config.num_labels
    if labels != 1:
        raise ValueError(f"{path}: a reward model needs a sequence-classification head with 1 label, it has {labels}")
    tokenizer = scoring_tokenizer(path)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def scoring_tokenizer(path: str):
    """The tokenizer as a reward model uses it: padding on the right, over-long texts cut from the left (the
    response, at the end, is what is being judged)."""
    from thinktune.models import load_tokenizer

    tokenizer = load_tokenizer(path)
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"
    return tokenizer


def scoring_ids(tokenizer, texts: list[str], max_length: int = 1024) -> list[list[int]]:
    """Each text's tokens as the reward model reads it: at most ``max_length``, cut from the left."""
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def sequence_scores(model, tokenizer, texts: list[str], max_length: int = 1024) -> torch.Tensor:
    """The single-label head's logit for each text, as one padded batch (differentiable)."""
    return token_scores(model, scoring_ids(tokenizer, texts, max_length), tokenizer.pad_token_id)


def token_scores(model, sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    """The single-label head's logit for each token sequence, right-padded into one batch (differentiable); the
    model scores each at its last token that is not ``pad_id``."""
    from thinktune.modeling import right_pad

    ids, mask = right_pad(sequences, pad_id)
    device = next(model.parameters()).device
    return model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits[:, 0].float()


def scored_position(sequence: list[int], pad_id: int) -> int:
    """Where a sequence classifier reads a sequence: its last token that is not the pad token (0 if none), as
    transformers' classifiers pick it.

    >>> scored_position([5, 6, 2, 7], pad_id=2), scored_position([5, 6, 2], pad_id=2)
    (3, 1)
    """
    return max((i for i, token in enumerate(sequence) if token != pad_id), default=0)


def score_head(model):
    """The score head of a Llama-family sequence classifier (peft-wrapped or not), which thinktune's own passes
    can run on the decoder stack's hidden states; None for other models (they run their own forward)."""
    from thinktune.modeling import FAST_MODEL_TYPES, base_model

    base = base_model(model)
    if getattr(getattr(base, "config", None), "model_type", None) not in FAST_MODEL_TYPES:
        return None
    return getattr(base, "score", None)


@torch.no_grad()
def reward_model_scores(path: str, texts: list[str], batch_size: int = 8, max_length: int = 1024) -> list[float]:
    """The model's scalar score of each text (the logit of its single label), in batches."""
    model, tokenizer = load_reward_model(path)
    scores: list[float] = []
    for i in range(0, len(texts), batch_size):
        scores += sequence_scores(model, tokenizer, texts[i : i + batch_size], max_length).tolist()
    return scores


@register_reward("reward_model")
def reward_model_reward(
    prompts, completions, path: str | None = None, batch_size: int = 8, run_dir: str | None = None, **_
) -> list[float]:
    """A reward model's score of prompt + completion: ``rm(prompt + completion)``, its single logit.

    ``path`` is the reward model's folder (``thinktune reward-model`` output or any HF sequence classifier
    with ``num_labels = 1``); by default, ``reward_model/`` of the recipe's run directory, where the
    ``reward_model`` stage saves it. The score is unbounded; GRPO's group normalisation makes its scale harmless.
    """
    path = path or (run_dir and str(Path(run_dir) / "reward_model"))
    if not path:
        raise ValueError("reward_model needs args: {path: <reward model folder>}")
    return reward_model_scores(path, [p + c for p, c in zip(prompts, completions, strict=True)], batch_size)
