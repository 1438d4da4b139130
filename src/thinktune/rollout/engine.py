"""The native rollout engine: a KV-cached decode loop that returns tokens and their log-probs.

Prompts are left-padded so every row's next token sits in the last column; positions are counted from
each row's first real token, exactly as Hugging Face ``generate`` does, so greedy output matches it.
The log-prob of each sampled token is taken under ``softmax(logits / temperature)`` (before top-k/top-p
filtering), the same distribution the policy update evaluates, so with one update per generation these
are the "old" log-probs and no extra forward pass is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass
class Rollout:
    """A batch of prompts and completions; row ``i`` belongs to prompt ``i // group_size``."""

    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, C] right-padded
    completion_mask: torch.Tensor  # [N, C] 1 up to and including the end-of-sequence token
    logprobs: torch.Tensor  # [N, C] log-prob of each completion token at the sampling temperature
    truncated: torch.Tensor  # [N] bool: no end-of-sequence token within the budget

    @property
    def completion_lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted from each row's first real token (0 under left padding)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask logits outside the top-k tokens and outside the smallest set holding top_p of the mass.

    >>> filter_logits(torch.tensor([[1.0, 3.0, 2.0]]), top_k=2)
    tensor([[-inf, 3., 2.]])
    """
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def generate(
    model,
    prompts: list[list[int]],
    *,
    eos_ids: list[int],
    pad_id: int,
    max_new_tokens: int,
    group_size: int = 1,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Sample ``group_size`` completions for each prompt (token-id lists)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = [p for p in prompts for _ in range(group_size)]
    prompt_ids, prompt_mask = left_pad(rows, pad_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    n = prompt_ids.shape[0]
    eos = torch.tensor(eos_ids, device=device)

    cache = DynamicCache()
    mask = prompt_mask
    pos = positions(mask)
    step_input = prompt_ids
    tokens, logps = [], []
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        out = model(
            input_ids=step_input,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1].float()
        if greedy:
            token = logits.argmax(-1)
            logp = logits.log_softmax(-1).gather(-1, token[:, None])[:, 0]
        else:
            scaled = logits / temperature
            probs = filter_logits(scaled, top_k, top_p).softmax(-1)
            token = torch.multinomial(probs, 1, generator=generator)[:, 0]
            logp = scaled.log_softmax(-1).gather(-1, token[:, None])[:, 0]
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        tokens.append(token)
        logps.append(torch.where(finished, torch.zeros_like(logp), logp))
        live = ~finished
        finished = finished | torch.isin(token, eos)
        if finished.all():
            break
        # A finished row keeps decoding pad tokens (masked out) so the batch stays rectangular.
        step_input = token[:, None]
        mask = torch.cat([mask, live.long()[:, None]], dim=-1)
        pos = pos[:, -1:] + 1

    completion_ids = torch.stack(tokens, dim=1)
    is_eos = torch.isin(completion_ids, eos)
    # Mask: every token up to and including the first end-of-sequence token.
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    completion_mask = (~after_eos).long()
    truncated = ~is_eos.any(-1)
    model.train(was_training)
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        logprobs=torch.stack(logps, dim=1) * completion_mask,
        truncated=truncated,
    )
