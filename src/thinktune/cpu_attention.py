"""Attention in float32 on CPUs, which lets bfloat16 training compute pay there; float32 runs are unchanged.

Under ``train.autocast=bf16`` (or on a bfloat16 model) torch runs its fused CPU attention in bfloat16, whose
backward is far slower than float32's on these machines (``benchmarks/stage_steps.py --profile``, SmolLM2 SFT under
autocast: 2.30 s a step in the bf16 attention backward, where float32 spends 1.07 s on forward and backward). The
attention here takes queries, keys and values to float32, runs torch's kernel there, and hands back the dtype the
bfloat16 kernel would have. It is registered with transformers as ``thinktune_sdpa`` and set on training models on
CPUs (:func:`use_float32_attention`); transformers never writes that name into a saved config.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

FLOAT32_ATTENTION = "thinktune_sdpa"


def float32_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention, computed in float32 when its inputs, or autocast, would run it in a lower
    precision on a CPU; returns what the lower-precision call returns, in its dtype. Decode steps (one query
    position) keep torch's own call.

    >>> q = k = v = torch.randn(1, 2, 3, 4).bfloat16()
    >>> class Layer(torch.nn.Module):
    ...     is_causal = True
    >>> out, _ = float32_sdpa(Layer(), q, k, v, None)  # float32 attention over the bf16 inputs, rounded once
    >>> widened, _ = sdpa_attention_forward(Layer(), q.float(), k.float(), v.float(), None)
    >>> out.dtype, torch.equal(out, widened.bfloat16())
    (torch.bfloat16, True)
    """
    autocast = query.device.type == "cpu" and torch.is_autocast_enabled("cpu")
    low = {query.dtype, key.dtype, value.dtype} != {torch.float32}
    # A decode step (one query) would widen the whole cache for little attention work: torch's own call there.
    if query.device.type != "cpu" or query.shape[2] == 1 or not (autocast or low):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    dtype = torch.get_autocast_dtype("cpu") if autocast else value.dtype
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast("cpu", enabled=False):
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return out.to(dtype), weights


AttentionInterface.register(FLOAT32_ATTENTION, float32_sdpa)
AttentionMaskInterface.register(FLOAT32_ATTENTION, sdpa_mask)


def use_float32_attention(model) -> None:
    """On a CPU, ``model``'s SDPA attention (transformers' default) becomes :func:`float32_sdpa`; other
    implementations and devices are left as they are."""
    config = getattr(model, "config", None)
    device = next(model.parameters()).device
    if device.type == "cpu" and getattr(config, "_attn_implementation", None) == "sdpa":
        config._attn_implementation = FLOAT32_ATTENTION
