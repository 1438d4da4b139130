"""Attention in float32 on CPUs, which lets bfloat16 training compute pay there, with grouped heads read in place.

Under ``train.autocast=bf16`` (or on a bfloat16 model) torch runs its fused CPU attention in bfloat16, whose
backward is far slower than float32's on these machines (``benchmarks/stage_steps.py --profile``, SmolLM2 SFT under
autocast: 2.30 s a step in the bf16 attention backward, where float32 spends 1.07 s on forward and backward). The
attention here takes queries, keys and values to float32, runs torch's kernel there, and hands back the dtype the
bfloat16 kernel would have. Grouped-query models (SmolLM2: 9 query heads, 3 key/value heads) skip transformers'
repeated key/value copies, in float32 runs too (:func:`grouped_sdpa`). It is registered with transformers as
``thinktune_sdpa`` and set on training models on CPUs (:func:`use_float32_attention`); transformers never writes that
name into a saved config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

FLOAT32_ATTENTION = "thinktune_sdpa"


def float32_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention, computed in float32 when its inputs, or autocast, would run it in a lower
    precision on a CPU; returns what the lower-precision call returns, in its dtype. Grouped-query models read their
    key/value heads in place (:func:`grouped_sdpa`). Decode steps (one query position) keep torch's own call.

    >>> q = k = v = torch.randn(1, 2, 3, 4).bfloat16()
    >>> class Layer(torch.nn.Module):
    ...     is_causal = True
    >>> out, _ = float32_sdpa(Layer(), q, k, v, None)  # float32 attention over the bf16 inputs, rounded once
    >>> widened, _ = sdpa_attention_forward(Layer(), q.float(), k.float(), v.float(), None)
    >>> out.dtype, torch.equal(out, widened.bfloat16())
    (torch.bfloat16, True)
    """
    # A decode step (one query) would widen the whole cache for little attention work: torch's own call there.
    if query.device.type != "cpu" or query.shape[2] == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    attention = grouped_sdpa if _groups_apply(module, query, key, attention_mask, kwargs) else sdpa_attention_forward
    autocast = torch.is_autocast_enabled("cpu")
    if not autocast and {query.dtype, key.dtype, value.dtype} == {torch.float32}:
        return attention(module, query, key, value, attention_mask, **kwargs)
    dtype = torch.get_autocast_dtype("cpu") if autocast else value.dtype
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast("cpu", enabled=False):
        out, weights = attention(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return out.to(dtype), weights


def _groups_apply(module, query, key, attention_mask, kwargs) -> bool:
    """Whether :func:`grouped_sdpa` computes this call: grouped-query attention with nothing it leaves out (a
    position bias, a soft cap, attention weights asked for, or a causal query shorter than its keys)."""
    plain = not any(kwargs.get(name) for name in ("position_bias", "softcap", "output_attentions"))
    aligned = attention_mask is not None or query.shape[2] == key.shape[2]
    return getattr(module, "num_key_value_groups", 1) > 1 and plain and aligned


def grouped_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' SDPA attention for grouped-query models with each key/value head read by its group of query
    heads in place: transformers repeats them into copies first when there is a mask (always, in training), and
    the copies' backward sums their gradients again. SmolLM2's shape (9 query heads, 3 key/value heads, 8 rows of 200
    positions, float32): forward and backward 22.6 against 20.7 ms and 28.8 against 25.7 ms a layer in two runs of
    ``python benchmarks/op_timings.py``. The gradients of keys and values are summed in another order: equal within
    1e-6, not to the bit.

    >>> class Layer(torch.nn.Module):
    ...     is_causal, num_key_value_groups = True, 2
    >>> q, kv = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 3, 8)
    >>> mask = torch.ones(1, 1, 3, 3, dtype=torch.bool).tril()
    >>> ours, _ = grouped_sdpa(Layer(), q, kv, kv, mask)
    >>> theirs, _ = sdpa_attention_forward(Layer(), q, kv, kv, mask)
    >>> torch.allclose(ours, theirs, atol=1e-6)
    True
    """
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    causal = causal and attention_mask is None and query.shape[2] > 1
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=causal, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(FLOAT32_ATTENTION, float32_sdpa)
AttentionMaskInterface.register(FLOAT32_ATTENTION, sdpa_mask)


def use_float32_attention(model) -> None:
    """On a CPU, ``model``'s SDPA attention (transformers' default) becomes :func:`float32_sdpa`; other
    implementations and devices are left as they are."""
    config = getattr(model, "config", None)
    device = next(model.parameters()).device
    if device.type == "cpu" and getattr(config, "_attn_implementation", None) == "sdpa":
        config._attn_implementation = FLOAT32_ATTENTION
