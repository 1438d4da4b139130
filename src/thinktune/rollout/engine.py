"""The native rollout engine: a KV-cached decode loop that returns tokens and their log-probs.

Prompts are left-padded so every row's next token sits in the last column; positions are counted from
each row's first real token, exactly as Hugging Face ``generate`` does, so greedy output matches it.
The log-prob of each sampled token is taken under ``softmax(logits / temperature)`` (before top-k/top-p
filtering), the same distribution the policy update evaluates, so with one update per generation these
are the "old" log-probs and no extra forward pass is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from thinktune.logits import sampling_weights, token_logprobs
from thinktune.modeling import left_pad, positions, prefix_then_left_pad, shared_prefix
from thinktune.rollout.decoders import make_decoder


@dataclass
class Rollout:
    """A batch of prompts and completions; row ``i`` belongs to prompt ``i // group_size``."""

    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, C] right-padded
    completion_mask: torch.Tensor  # [N, C] 1 up to and including the end-of-sequence token
    logprobs: torch.Tensor  # [N, C] log-prob of each completion token at the sampling temperature
    truncated: torch.Tensor  # [N] bool: no end-of-sequence token within the budget
    # the distribution ``logprobs`` are taken under, softmax(logits / temperature) (1 for greedy); the trainer
    # scores the rollout at the same temperature
    temperature: float = 1.0

    @property
    def completion_lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)

    def to(self, device: torch.device | str) -> Rollout:
        """Every tensor on ``device``."""
        tensors = (getattr(self, f.name).to(device) for f in fields(self) if f.name != "temperature")
        return Rollout(*tensors, temperature=self.temperature)

    def take(self, rows: torch.Tensor) -> Rollout:
        """Only the given rows."""
        tensors = (getattr(self, f.name)[rows] for f in fields(self) if f.name != "temperature")
        return Rollout(*tensors, temperature=self.temperature)

    @staticmethod
    def cat(parts: list[Rollout], pad_id: int) -> Rollout:
        """Rows of every part in order: prompts padded on the left, completions on the right, to the widest.

        >>> a = Rollout(*[torch.ones(1, 2, dtype=torch.long)] * 4, torch.zeros(1, 2), torch.tensor([False]))
        >>> b = Rollout(*[torch.ones(1, 1, dtype=torch.long)] * 4, torch.zeros(1, 1), torch.tensor([True]))
        >>> both = Rollout.cat([a, b], pad_id=0)
        >>> both.prompt_mask.tolist(), both.completion_mask.tolist()
        ([[1, 1], [0, 1]], [[1, 1], [1, 0]])
        """
        if len({p.temperature for p in parts}) > 1:
            raise ValueError("Rollout.cat: the parts were sampled at different temperatures")
        prompt_width = max(p.prompt_ids.shape[1] for p in parts)
        completion_width = max(p.completion_ids.shape[1] for p in parts)

        def pad(tensor, width, value, left):
            missing = width - tensor.shape[1]
            return torch.nn.functional.pad(tensor, (missing, 0) if left else (0, missing), value=value)

        return Rollout(
            torch.cat([pad(p.prompt_ids, prompt_width, pad_id, True) for p in parts]),
            torch.cat([pad(p.prompt_mask, prompt_width, 0, True) for p in parts]),
            torch.cat([pad(p.completion_ids, completion_width, pad_id, False) for p in parts]),
            torch.cat([pad(p.completion_mask, completion_width, 0, False) for p in parts]),
            torch.cat([pad(p.logprobs, completion_width, 0.0, False) for p in parts]),
            torch.cat([p.truncated for p in parts]),
            parts[0].temperature,
        )


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


def sample_categorical(probs: torch.Tensor, generator=None, block: int = 1024) -> torch.Tensor:
    """One draw per row from unnormalised ``probs`` by inverting the cumulative sum, in two levels.

    Same distribution as ``torch.multinomial(probs, 1)``, which draws an exponential per vocabulary entry and took
    40 ms per decode step for 32 rows x 49k tokens here; this takes one uniform per row. The uniform first picks a
    block of ``block`` entries by the blocks' cumulative masses, then an entry by the cumulative sum inside that block
    only: a cumulative sum over the whole vocabulary is a sequential pass over it, and the blocks' sums are a fast
    reduction. At 32 rows x 49k the whole draw took 0.28 ms here, the one-level cumulative sum alone 0.75 ms
    (``python benchmarks/op_timings.py``).
    A zero-probability entry is never picked, not even where rounding puts the draw past the last cumulative value.

    >>> sample_categorical(torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])).tolist()
    [1, 2]
    >>> probs = torch.zeros(2, 10); probs[0, 7] = probs[1, 2] = 1.0
    >>> sample_categorical(probs, block=4).tolist()  # blocks [0-3], [4-7], [8-9]
    [7, 2]
    """
    rows, vocab = probs.shape
    blocks = -(-vocab // block)
    padded = torch.nn.functional.pad(probs, (0, blocks * block - vocab)).view(rows, blocks, block)
    block_cdf = padded.sum(-1).cumsum(-1)
    u = torch.rand(rows, 1, generator=generator, device=probs.device, dtype=block_cdf.dtype)
    target = u * block_cdf[:, -1:]
    chosen = _invert_cdf(block_cdf, target)
    below = torch.where(chosen > 0, block_cdf.gather(-1, (chosen - 1).clamp(min=0)), 0.0)
    inner_cdf = padded[torch.arange(rows, device=probs.device), chosen[:, 0]].cumsum(-1)
    return (chosen * block + _invert_cdf(inner_cdf, target - below))[:, 0]


def _invert_cdf(cdf: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The first column whose cumulative value exceeds ``target`` (one per row, kept as a column): a column that adds
    mass. A target at or past the total (rounding) gets the last column that adds mass."""
    last_with_mass = torch.searchsorted(cdf, cdf[:, -1:].contiguous(), right=False)
    return torch.minimum(torch.searchsorted(cdf, target, right=True), last_with_mass)


def pick_tokens(
    logits: torch.Tensor, greedy: bool, temperature: float, top_k: int, top_p: float, generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens and their log-probs under ``softmax(logits / temperature)`` (greedy: temperature 1).

    bfloat16 ``logits`` (a bfloat16 decoder's) give the numbers their float32 copy would, without the copy: every
    computation widens them to float32 first (a decode step's 32 rows x 49k logits are not copied).
    """
    if greedy:
        token = logits.argmax(-1)
        return token, token_logprobs(logits, token)
    weights, log_norm = sampling_weights(logits, temperature)
    if top_k > 0 or top_p < 1.0:
        widened = logits.to(log_norm.dtype) / temperature
        weights = weights.masked_fill(filter_logits(widened, top_k, top_p).isinf(), 0.0)
    token = sample_categorical(weights, generator)
    return token, (logits.gather(-1, token[:, None]).to(log_norm.dtype) / temperature - log_norm)[:, 0]


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
    fast: bool = True,
    on_tokens: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    dtype: torch.dtype | None = None,
) -> Rollout:
    """Sample ``group_size`` completions for each prompt (token-id lists).

    Each prompt is prefilled once and its KV cache copied to the rows of its group (with the fast decoder, a
    prefix common to every prompt, such as a system prompt and worked examples, once for all); a row that has ended
    leaves the decode batch (and the cache) at once, so later steps only pay for rows still generating.
    ``fast`` uses the merged-weights decoder for Llama-family models (see ``decoders``); off, or for
    other architectures, the Hugging Face model runs each step itself (``dtype``: bfloat16 passes on a float32
    model). ``on_tokens(rows, tokens)`` sees each step's new tokens as they are picked (to stream them)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    unique_ids, unique_mask = (t.to(device) for t in left_pad(prompts, pad_id))
    eos = torch.tensor(eos_ids, device=device)
    decoder = make_decoder(model, unique_ids.shape[1] + max_new_tokens, fast, dtype, len(prompts) * group_size)
    logits, mask = _prefill(decoder, prompts, (unique_ids, unique_mask), pad_id, group_size)
    next_position = positions(mask)[:, -1:] + 1
    n = mask.shape[0]

    completion_ids = torch.full((n, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((n, max_new_tokens), device=device)
    active = torch.arange(n, device=device)  # rows of the batch still generating
    width = 0
    for step in range(max_new_tokens):
        token, logp = pick_tokens(logits, greedy, temperature, top_k, top_p, generator)
        completion_ids[active, step] = token
        logprobs[active, step] = logp
        if on_tokens is not None:
            on_tokens(active, token)
        width = step + 1
        ended = torch.isin(token, eos)
        if ended.all() or width == max_new_tokens:
            break
        if ended.any():
            keep = tail_into_gaps(~ended)
            active, token, mask, next_position = active[keep], token[keep], mask[keep], next_position[keep]
            decoder.keep(keep)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        logits = decoder.decode(token, mask, next_position)
        next_position = next_position + 1

    model.train(was_training)
    prompts = (unique_ids.repeat_interleave(group_size, dim=0), unique_mask.repeat_interleave(group_size, dim=0))
    return _rollout(*prompts, completion_ids[:, :width], logprobs[:, :width], eos, 1.0 if greedy else temperature)


def tail_into_gaps(live: torch.Tensor) -> torch.Tensor:
    """The batch rows to keep, in their new order: a live row among the first ``n`` (the live count) stays where it is,
    and the live rows past them take the places of the ended ones, so a cache moves a few rows, not every one.

    >>> tail_into_gaps(torch.tensor([True, False, True, False, True, True])).tolist()
    [0, 4, 2, 5]
    """
    count = int(live.sum())
    rows = torch.arange(count, device=live.device)
    rows[(~live[:count]).nonzero()[:, 0]] = live[count:].nonzero()[:, 0] + count
    return rows


def _prefill(decoder, prompts: list[list[int]], padded, pad_id: int, group_size: int):
    """The prompts' prefill: the next tokens' logits and the cache's mask, a row per completion. With a decoder that
    shares prefixes, a prefix common to every prompt runs once (its columns first, then each prompt's rest)."""
    shared = shared_prefix(prompts) if decoder.shares_prefix else 0
    ids, mask = padded
    if shared:
        ids, mask = (t.to(ids.device) for t in prefix_then_left_pad(prompts, pad_id, shared))
    logits = decoder.prefill(ids, mask, positions(mask), group_size, shared)
    return logits, mask.repeat_interleave(group_size, dim=0)


def _rollout(prompt_ids, prompt_mask, completion_ids, logprobs, eos: torch.Tensor, temperature: float) -> Rollout:
    """The sampled tokens as a :class:`Rollout`: each completion masked after its first end-of-sequence token."""
    is_eos = torch.isin(completion_ids, eos)
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    completion_mask = (~after_eos).long()
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        logprobs=logprobs * completion_mask,
        truncated=~is_eos.any(-1),
        temperature=temperature,
    )
