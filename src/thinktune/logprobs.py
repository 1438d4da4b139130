"""Per-token log-probs of completion tokens under a model, computing logits for completion positions only."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from thinktune.logits import entropy, head_token_logprobs, token_logprobs
from thinktune.modeling import (
    base_model,
    cache_argument,
    decoder_stack,
    plain_head,
    positions,
    prefix_cache,
    prefix_then_left_pad,
    shared_prefix,
)


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
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask), "use_cache": False}
    head = plain_head(model)
    if head is not None:
        hidden = decoder_stack(model)(**inputs).last_hidden_state[:, -width - 1 : -1]
        return head_token_logprobs(hidden, head.weight, completion_ids, temperature, with_entropy)
    out = model(**inputs, logits_to_keep=width + 1)
    logits = out.logits[:, :-1].float() / temperature  # position t predicts token t + 1
    return token_logprobs(logits, completion_ids), entropy(logits) if with_entropy else None


@torch.no_grad()
def rollout_logprobs(model, rollout, rows_per_pass: int) -> torch.Tensor:
    """:func:`completion_logprobs` of every completion of a ``Rollout`` under ``model`` as it is now, at the
    rollout's sampling temperature, without gradients, ``rows_per_pass`` rows at a time; 0 past each completion's
    end."""
    out = torch.zeros_like(rollout.logprobs)
    for rows in torch.arange(out.shape[0]).split(rows_per_pass):
        out[rows], _ = completion_logprobs(
            model,
            rollout.prompt_ids[rows],
            rollout.prompt_mask[rows],
            rollout.completion_ids[rows],
            rollout.completion_mask[rows],
            rollout.temperature,
        )
    return out * rollout.completion_mask


@dataclass
class SharedPrompts:
    """Distinct prompts run through the model once, with gradients; every completion of a prompt reuses them.

    A GRPO batch holds each prompt G times. Here a prompt's keys/values and last hidden state are computed
    once and each completion attends to them, which takes (G − 1)/G of the prompt tokens out of the forward
    and the backward pass (SmolLM2 benchmark batch: 3 200 prompt tokens become 400).

    Micro-batches differentiate into detached copies of the prompt states (``leaves``), whose gradients
    add up across micro-batches; :meth:`backward` then takes them through the prompt pass once.
    """

    outputs: list[torch.Tensor]  # last hidden state [P, H], then keys and values [P, heads, L, d] per layer
    leaves: list[torch.Tensor]
    mask: torch.Tensor  # [P, L]

    @classmethod
    def encode(cls, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, detach: bool = True) -> SharedPrompts:
        """The prompts' pass. ``detach=False``: the completions' passes differentiate straight into it, for a caller
        that runs them all before one backward (no :meth:`backward` then).

        A prefix common to every prompt (:func:`shared_prefix`: a system message, a worked example) runs once, and
        each prompt's rest attends to it: the prompts' states then sit in columns laid out as
        :func:`prefix_then_left_pad` lays them (the prefix's, then each rest left-padded), in :attr:`mask`. The
        demo's prompts share 88 of their 100 tokens; two of them cost 112 positions instead of 200.
        """
        rows = [ids[keep].tolist() for ids, keep in zip(prompt_ids.cpu(), prompt_mask.cpu().bool(), strict=True)]
        shared = shared_prefix(rows)
        cache = DynamicCache()
        if shared:
            prefix = prompt_ids.new_tensor(rows[0][:shared])[None]
            _stack_pass(model, prefix, torch.ones_like(prefix), 0, cache)
            many = len(rows)  # the rest's pass appends to a view of the prefix's states per prompt
            cache = DynamicCache(
                ddp_cache_data=[
                    (t.keys.expand(many, -1, -1, -1), t.values.expand(many, -1, -1, -1)) for t in cache.layers
                ]
            )
            prompt_ids, prompt_mask = (t.to(prompt_ids.device) for t in prefix_then_left_pad(rows, 0, shared))
        hidden = _stack_pass(model, prompt_ids, prompt_mask, shared, cache)
        outputs = [hidden] + [t for layer in cache.layers for t in (layer.keys, layer.values)]
        leaves = [t.detach().requires_grad_(t.requires_grad) for t in outputs] if detach else outputs
        return cls(outputs, leaves, prompt_mask)

    def completion_logprobs(
        self,
        model,
        prompt_index: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        temperature: float = 1.0,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As :func:`completion_logprobs`, for completions of the prompts ``prompt_index`` (one per row)."""
        # plans index on the CPU; the states live on the model's device
        prompt_index = prompt_index.to(self.mask.device)
        hidden = self.completion_hidden(model, prompt_index, completion_ids, completion_mask)
        # The prompt's last position predicts the first completion token; completion position t the t + 1-th.
        last_prompt = self.leaves[0].index_select(0, prompt_index)
        hidden = torch.cat([last_prompt[:, None], hidden[:, :-1]], dim=1)
        return head_token_logprobs(hidden, plain_head(model).weight, completion_ids, temperature, with_entropy)

    def completion_hidden(
        self, model, prompt_index: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> torch.Tensor:
        """The decoder stack's last hidden state ``[B, C, H]`` at the completion positions, each row attending to
        its prompt ``prompt_index``'s states."""
        _, *kv = self.leaves
        keys, values = kv[::2], kv[1::2]
        prompt_index = prompt_index.to(self.mask.device)
        # index_select, not k[prompt_index]: on CPU the backward of advanced indexing adds rows with parallel
        # atomic adds, so the prompts' gradients changed with thread timing (two runs of one recipe differed in
        # the 5th digit). index_select's backward adds them in order, and faster: benchmarks/profile_step.py
        # showed index_put_ taking 142 ms of a 4.1 s SmolLM2 update before.
        layers = [
            (k.index_select(0, prompt_index), v.index_select(0, prompt_index))
            for k, v in zip(keys, values, strict=True)
        ]
        cache = prefix_cache(layers)  # read, never grown: a replay under activation checkpointing reads the same
        mask = torch.cat([self.mask[prompt_index], completion_mask], dim=1)
        return decoder_stack(model)(
            input_ids=completion_ids,
            attention_mask=mask,
            position_ids=positions(mask)[:, -completion_ids.shape[1] :],
            **cache_argument(base_model(model).model, cache),
            use_cache=True,
        ).last_hidden_state

    def backward(self) -> None:
        """Take the gradients the micro-batches left on the prompt states through the prompt pass."""
        pairs = [(out, leaf.grad) for out, leaf in zip(self.outputs, self.leaves, strict=True) if leaf.grad is not None]
        if pairs:
            torch.autograd.backward([out for out, _ in pairs], [grad for _, grad in pairs])


def _stack_pass(model, ids: torch.Tensor, mask: torch.Tensor, start: int, cache: DynamicCache):
    """The decoder stack over ``ids``' columns from ``start`` on (the cache holds those before), appending their keys
    and values to ``cache``. Returns the last position's hidden state."""
    return decoder_stack(model)(
        input_ids=ids[:, start:],
        attention_mask=mask,
        position_ids=positions(mask)[:, start:],
        **cache_argument(base_model(model).model, cache),
        use_cache=True,
    ).last_hidden_state[:, -1]


def supports_shared_prompts(model) -> bool:
    """Llama-family models with a plain LM head: the path :class:`SharedPrompts` is tested on."""
    return plain_head(model) is not None
