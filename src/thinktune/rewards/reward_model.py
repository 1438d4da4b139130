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

    from thinktune.models import load_tokenizer, resolve_model

    folder = Path(path)
    if (folder / "adapter_config.json").is_file():
        from peft import AutoPeftModelForSequenceClassification

        model = AutoPeftModelForSequenceClassification.from_pretrained(path)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(resolve_model(path))
    labels = model.config.num_labels
    if labels != 1:
        raise ValueError(f"{path}: a reward model needs a sequence-classification head with 1 label, it has {labels}")
    tokenizer = load_tokenizer(path)
    tokenizer.padding_side = "right"
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


@torch.no_grad()
def reward_model_scores(path: str, texts: list[str], batch_size: int = 8, max_length: int = 1024) -> list[float]:
    """The model's scalar score of each text (the logit of its single label), in batches."""
    model, tokenizer = load_reward_model(path)
    device = next(model.parameters()).device
    scores: list[float] = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        scores += model(**batch).logits[:, 0].float().tolist()
    return scores


@register_reward("reward_model")
def reward_model_reward(prompts, completions, path: str | None = None, batch_size: int = 8, **_) -> list[float]:
    """A reward model's score of prompt + completion: ``rm(prompt + completion)``, its single logit.

    ``path`` is the reward model's folder (``thinktune reward-model`` output or any HF sequence classifier
    with ``num_labels = 1``). The score is unbounded; GRPO's group normalisation makes its scale harmless.
    """
    if not path:
        raise ValueError("reward_model needs args: {path: <reward model folder>}")
    return reward_model_scores(path, [p + c for p, c in zip(prompts, completions, strict=True)], batch_size)
