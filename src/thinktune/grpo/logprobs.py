"""Per-token log-probs of completion tokens under a model, computing logits for completion positions only."""

from __future__ import annotations

import torch

from thinktune.logits import entropy, head_token_logprobs, token_logprobs
from thinktune.rollout.decoders import FAST_MODEL_TYPES, base_model
from thinktune.rollout.engine import positions


def completion_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each completion token given everything before it, at ``temperature``.

    Returns ``[B, C]`` log-probs (and the per-token entropy of the sampling distribution if asked).
    Only completion positions go through the LM head, and for Llama-family models a chunk at a time
    (:func:`head_token_logprobs`): the full ``[B, C, vocab]`` logits never exist.
    """
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)
    width = completion_ids.shape[1]
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask)}
    head = _plain_head(model)
    if head is not None:
        hidden = base_model(model).model(**inputs).last_hidden_state[:, -width - 1 : -1]
        return head_token_logprobs(hidden, head.weight, completion_ids, temperature, with_entropy)
    out = model(**inputs, logits_to_keep=width + 1)
    logits = out.logits[:, :-1].float() / temperature  # position t predicts token t + 1
    return token_logprobs(logits, completion_ids), entropy(logits) if with_entropy else None


def _plain_head(model) -> torch.nn.Linear | None:
    """The LM head when logits are exactly ``hidden @ W.T`` (no bias, adapter, soft-capping or scaling)."""
    base = base_model(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in FAST_MODEL_TYPES or type(head) is not torch.nn.Linear:
        return None
    return head if head.bias is None else None
