"""Per-token log-probs of completion tokens under a model, computing logits for completion positions only."""

from __future__ import annotations

import torch

from thinktune.logits import entropy, token_logprobs
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
    Only the last ``C + 1`` positions go through the LM head: the prompt's logits are never built.
    """
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)
    width = completion_ids.shape[1]
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), logits_to_keep=width + 1)
    logits = out.logits[:, :-1].float() / temperature  # position t predicts token t + 1
    return token_logprobs(logits, completion_ids), entropy(logits) if with_entropy else None
