"""What the sampler and the trainer both need to know about a model and a batch's layout.

The rollout engine, the vLLM weight push and the trainer's log-prob passes all look through a peft wrapper to the
transformers model, read a LoRA layer's merged weight, lay prompts out left-padded and count positions from each
row's first real token. Those facts live here, so training code never imports the sampler's internals.
"""

from __future__ import annotations

import functools
import inspect

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

FAST_MODEL_TYPES = ("llama", "qwen2", "qwen3")  # the Llama-family layout thinktune's fast paths are tested on


def base_model(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_stack(model):
    """What the trainer's passes call: the decoder stack under the LM head (``model.model``), or with several
    processes on DDP the wrapper that runs it and arms DDP's gradient reduction (:class:`thinktune.parallel.DDP`)."""
    base = base_model(model)
    wrapper = base.__dict__.get("data_parallel")
    return base.model if wrapper is None else wrapper


def plain_head(model) -> torch.nn.Linear | None:
    """The LM head when logits are exactly ``hidden @ W.T`` (no bias, adapter, soft-capping or scaling) on a
    Llama-family model, else None."""
    base = base_model(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in FAST_MODEL_TYPES or type(head) is not torch.nn.Linear:
        return None
    return head if head.bias is None else None


def effective_weight(linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A linear layer's weight with its active LoRA adapters merged in (peft layers), and its bias.

    For a LoRA layer ``W' = W + scaling * B @ A``, the update ``merge_adapter`` would apply, in the base weight's
    dtype (float32 adapters on a bfloat16 base give a bfloat16 ``W'``, exactly as peft's in-place merge does),
    computed into a new tensor so the trainable model is never touched. Where base and adapters are all float32 it is
    one ``addmm`` (equal to peft's merge up to rounding): peft's product, scaling and sum each pass over the whole
    weight: under the profiler 170 of the 352 ms a bfloat16 SmolLM2 snapshot took (``rollout.decoders``), once a
    rollout.
    """
    if hasattr(linear, "base_layer"):  # a peft LoRA layer
        base = linear.base_layer
        weight = plain_weight(base)
        dtype = weight.dtype
        if not linear.merged and not linear.disable_adapters:
            for name in linear.active_adapters:
                if name in linear.lora_A:
                    weight = _merged(linear, name, weight).to(dtype)
        return weight, None if base.bias is None else base.bias.detach()
    return plain_weight(linear), None if linear.bias is None else linear.bias.detach()


def _merged(linear, name: str, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` plus adapter ``name``'s delta: in one ``addmm`` where every operand is float32 and the adapter a
    plain one (not transposed), else through peft's ``get_delta_weight``."""
    a, b = linear.lora_A[name].weight.detach(), linear.lora_B[name].weight.detach()
    plain = not linear.fan_in_fan_out and not getattr(linear, "use_dora", {}).get(name, False)
    if plain and weight.dtype == a.dtype == b.dtype == torch.float32:
        return torch.addmm(weight, b, a, alpha=linear.scaling[name])
    return weight + linear.get_delta_weight(name).detach()


def plain_weight(linear) -> torch.Tensor:
    """A linear layer's weight as a plain tensor; a 4-bit one (``model.quantize: nf4``) dequantized, which holds only
    until bitsandbytes' CPU kernels first run it (they repack it in place): samplers read such a model through its
    own forward (:func:`is_quantized`)."""
    weight = linear.weight
    if getattr(weight, "quant_state", None) is None:
        return weight.detach()
    from bitsandbytes.functional import dequantize_4bit

    return dequantize_4bit(weight.data, weight.quant_state)


def is_quantized(model) -> bool:
    """Whether the model's base was loaded quantized (bitsandbytes, ``model.quantize``)."""
    return bool(getattr(base_model(model), "is_quantized", False))


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists as one left-padded batch and its attention mask, so every row ends in the last column.

    >>> ids, mask = left_pad([[5, 6], [7]], pad_id=0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6], [0, 7]], [[1, 1], [0, 1]])
    """
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def common_prefix(sequences: list[list[int]]) -> int:
    """How many leading tokens every sequence shares, short of the shortest one's last token (so each keeps at
    least one token of its own).

    >>> common_prefix([[1, 2, 3, 4], [1, 2, 5]]), common_prefix([[1, 2], [1, 2, 3]]), common_prefix([[7]])
    (2, 1, 0)
    """
    shortest = min(len(s) for s in sequences)
    shared = 0
    while shared < shortest - 1 and all(s[shared] == sequences[0][shared] for s in sequences):
        shared += 1
    return shared


# Positions a shared prefix must save before it gets a pass of its own: that pass pays every layer's fixed
# per-op cost once more, which a prefix of a token or two (the rollout benchmark's "Calculate") does not repay.
MIN_SHARED_POSITIONS = 64


def shared_prefix(sequences: list[list[int]]) -> int:
    """:func:`common_prefix`, where running it once instead of in every sequence saves at least
    ``MIN_SHARED_POSITIONS`` positions; else 0.

    >>> shared_prefix([[1] * 40 + [2], [1] * 40 + [3]]), shared_prefix([[1] * 40 + [2], [1] * 40 + [3], [1] * 41])
    (0, 40)
    """
    shared = common_prefix(sequences) if len(sequences) > 1 else 0
    return shared if shared * (len(sequences) - 1) >= MIN_SHARED_POSITIONS else 0


def prefix_then_left_pad(sequences: list[list[int]], pad_id: int, shared: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`left_pad`, but the first ``shared`` tokens (common to every row) stay in the first columns and only
    the rest of each row is left-padded after them: one copy of the prefix can then serve every row. Every row still
    ends in the last column; :func:`positions` counts through the gap.

    >>> ids, mask = prefix_then_left_pad([[1, 2, 3, 4], [1, 2, 5]], pad_id=0, shared=2)
    >>> ids.tolist(), mask.tolist(), positions(mask).tolist()
    ([[1, 2, 3, 4], [1, 2, 0, 5]], [[1, 1, 1, 1], [1, 1, 0, 1]], [[0, 1, 2, 3], [0, 1, 1, 2]])
    """
    prefix = torch.tensor(sequences[0][:shared], dtype=torch.long)
    ids, mask = left_pad([s[shared:] for s in sequences], pad_id)
    rows = len(sequences)
    return torch.cat([prefix.expand(rows, shared), ids], 1), torch.cat(
        [torch.ones(rows, shared, dtype=mask.dtype), mask], 1
    )


def right_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists as one right-padded batch and its attention mask, so every row starts in the first column.

    >>> ids, mask = right_pad([[5, 6], [7]], pad_id=0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6], [7, 0]], [[1, 1], [1, 0]])
    """
    width = max(len(s) for s in sequences)
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in sequences], dtype=torch.long)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], dtype=torch.long)
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted from each row's first real token (0 under left padding).

    >>> positions(torch.tensor([[0, 1, 1]])).tolist()
    [[0, 0, 1]]
    """
    return (mask.cumsum(-1) - 1).clamp(min=0)


def cache_argument(module, cache) -> dict:
    """``module``'s keyword for its KV cache, with ``cache``: ``cache`` in transformers 5.2x, ``past_key_values``
    before (deprecated since, and to be removed in 5.40)."""
    return {_cache_keyword(type(module)): cache}


@functools.cache
def _cache_keyword(cls) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


class _PrefixLayer(DynamicLayer):
    """A cache layer that holds a fixed prefix: ``update`` returns prefix + new states and stores nothing, so a
    pass replayed by activation checkpointing sees exactly what the first pass saw."""

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def prefix_cache(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A KV cache of fixed ``(keys, values)`` per layer that a forward reads and never grows (:class:`_PrefixLayer`).

    >>> k = torch.zeros(1, 1, 2, 4)
    >>> cache = prefix_cache([(k, k)])
    >>> keys, _ = cache.update(torch.ones(1, 1, 3, 4), torch.ones(1, 1, 3, 4), 0)
    >>> keys.shape[-2], cache.get_seq_length()
    (5, 2)
    """
    cache = DynamicCache(ddp_cache_data=layers)
    for layer in cache.layers:
        layer.__class__ = _PrefixLayer
    return cache
