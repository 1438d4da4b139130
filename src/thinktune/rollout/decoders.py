"""Two ways to run the decode loop's forward passes; the engine picks the fastest that fits the model.

- ``HFDecoder`` calls the Hugging Face model itself with a ``DynamicCache``: works for every causal LM.
- ``LlamaDecoder`` runs Llama-family models (Llama, SmolLM, Qwen2, Qwen3) from a *snapshot* of their weights: LoRA
  deltas merged in (so no adapter matmuls per token), q/k/v and gate/up fused into one matmul each (and, packed
  for oneDNN, each residual add inside the matmul before it), and a key/value cache allocated once and written in
  place. Hugging Face's ``DynamicCache`` grows by
  concatenation, which copies the whole cache on every token. One decode step of SmolLM2 + LoRA at 32 rows:
  127 ms through Hugging Face, 92 ms here (``python benchmarks/op_timings.py``).

Both take left-padded ids, the attention mask over every column so far and the position ids; both return
the logits of the last column, in the dtype they compute in (``engine.pick_tokens`` widens bfloat16 ones exactly).
Rows leave the batch with ``keep(rows)``.

With a ``dtype`` (``rollout.dtype``) they compute in it: ``LlamaDecoder`` snapshots its weights, norms and cache
in that dtype; ``HFDecoder`` runs under autocast. bfloat16 pays on a GPU and on CPUs whose bfloat16 matmuls run
faster (``rollout.dtype: auto`` times them). On a CPU in bfloat16 the snapshot's weights are packed once for oneDNN
(:class:`Linear`), and a decode step attends through :func:`one_query_attention` (torch's fused kernel is slow there).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from thinktune.modeling import FAST_MODEL_TYPES, base_model, cache_argument, effective_weight, is_quantized


class HFDecoder:
    shares_prefix = False  # every prompt is prefilled whole

    def __init__(self, model, dtype: torch.dtype | None = None):
        self.model = model
        self.cache = DynamicCache()
        device = next(model.parameters()).device.type
        self.precision = contextlib.nullcontext if dtype is None else lambda: torch.autocast(device, dtype=dtype)

    def prefill(self, ids, mask, position_ids, group_size: int, shared: int = 0) -> torch.Tensor:
        with self.precision():
            return self._prefill(ids, mask, position_ids, group_size)

    def decode(self, token, mask, position_ids) -> torch.Tensor:
        with self.precision():
            return self._decode(token, mask, position_ids)

    def _prefill(self, ids, mask, position_ids, group_size: int) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids,
            **cache_argument(base_model(self.model), self.cache),
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache.batch_repeat_interleave(group_size)
        return out.logits[:, -1].float().repeat_interleave(group_size, dim=0)

    def _decode(self, token, mask, position_ids) -> torch.Tensor:
        out = self.model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=position_ids,
            **cache_argument(base_model(self.model), self.cache),
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1].float()

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)


def _lora_layers_supported(model) -> bool:
    """peft layers we can merge: LoRA on linear layers only (no DoRA, no adapted embeddings or head)."""
    for module in model.modules():
        if hasattr(module, "lora_A"):
            if not hasattr(module, "get_delta_weight") or not isinstance(module.base_layer, torch.nn.Linear):
                return False
            if any(module.use_dora.get(name, False) for name in module.active_adapters):
                return False
    return True


def supports_fast_decode(model) -> bool:
    config = getattr(base_model(model), "config", None)
    return (
        getattr(config, "model_type", None) in FAST_MODEL_TYPES
        and getattr(config, "hidden_act", None) == "silu"
        and not getattr(config, "sliding_window", None)
        and not getattr(config, "use_sliding_window", False)
        and _lora_layers_supported(model)
        and not is_quantized(model)  # 4-bit weights: only their own kernels read them (see modeling.plain_weight)
    )


def _cat(pairs):
    """Stack (weight, bias) pairs into one linear layer; a missing bias becomes zeros if any is present."""
    weight = torch.cat([w for w, _ in pairs])
    if all(b is None for _, b in pairs):
        return weight, None
    return weight, torch.cat(
        [torch.zeros(w.shape[0], dtype=w.dtype, device=w.device) if b is None else b for w, b in pairs]
    )


class LlamaDecoder:
    """Decode forward passes for a Llama-family model from a merged, fused snapshot of its weights (in ``dtype``
    when given, else the model's own)."""

    shares_prefix = True  # prefill runs a prefix common to every prompt once (engine.generate)

    def __init__(self, model, max_columns: int, dtype: torch.dtype | None = None, max_rows: int | None = None):
        base = base_model(model)
        config = base.config
        inner = base.model
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.max_columns = max_columns

        def cast(tensor):
            return tensor if dtype is None or tensor is None else tensor.to(dtype)

        def linear(*pairs):  # cast before fusing: the concatenation then copies half the bytes
            weight, bias = _cat([(cast(w), cast(b)) for w, b in pairs]) if len(pairs) > 1 else map(cast, pairs[0])
            return Linear(weight, bias, rows=max_rows)

        def norm(module):
            return None if module is None else RMSNorm(module, dtype)

        embed = inner.embed_tokens.weight.detach()
        head, head_bias = effective_weight(base.lm_head)
        self.embed = cast(embed)
        tied = head.data_ptr() == embed.data_ptr() and head.shape == embed.shape  # SmolLM2: cast 28M weights once
        self.lm_head = Linear(self.embed if tied else cast(head), cast(head_bias), rows=max_rows)
        self.rotary = inner.rotary_emb
        self.final_norm = norm(inner.norm)
        self.layers = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                {
                    "norm1": norm(layer.input_layernorm),
                    "qkv": linear(*map(effective_weight, (attn.q_proj, attn.k_proj, attn.v_proj))),
                    "o": linear(effective_weight(attn.o_proj)),
                    "q_norm": norm(getattr(attn, "q_norm", None)),  # Qwen3: RMSNorm over each head's query and key
                    "k_norm": norm(getattr(attn, "k_norm", None)),
                    "norm2": norm(layer.post_attention_layernorm),
                    "gate_up": linear(effective_weight(mlp.gate_proj), effective_weight(mlp.up_proj)),
                    "down": linear(effective_weight(mlp.down_proj)),
                }
            )
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.filled = 0  # cache columns written so far

    def _forward(self, ids, mask, position_ids) -> torch.Tensor:
        batch, width = ids.shape
        start, end = self.filled, self.filled + width
        x = F.embedding(ids, self.embed)
        cos, sin = self.rotary(x, position_ids)
        cos, sin = cos[:, :, None], _signed_sin(sin)[:, :, None]  # [B, W, 1, D]: every head of a position alike
        # Key j is visible to query i when it is real and not in i's future; a padding query sees itself only,
        # so its (unused) output stays finite.
        columns = torch.arange(end, device=ids.device)
        query_columns = torch.arange(start, end, device=ids.device)
        causal = columns[None, :] <= query_columns[:, None]
        visible = (causal[None] & mask[:, None, :end].bool()) | (columns[None, None] == query_columns[None, :, None])
        visible = visible[:, None]
        one_query = width == 1 and x.is_cpu  # torch's fused kernel is slow there, and reads transposed keys slowly
        attend = one_query_attention if one_query else sdpa
        visible = grouped_mask(visible, self.kv_heads, self.embed.dtype) if one_query else visible
        heads, q_size, kv_size = self.heads, self.heads * self.head_dim, self.kv_heads * self.head_dim
        for i, layer in enumerate(self.layers):
            h = layer["norm1"](x)
            qkv = layer["qkv"](h)
            qk = qkv[..., : q_size + kv_size].view(batch, width, heads + self.kv_heads, self.head_dim)
            if layer["q_norm"] is not None:
                qk = torch.cat([layer["q_norm"](qk[:, :, :heads]), layer["k_norm"](qk[:, :, heads:])], dim=2)
            qk = qk * cos + qk.roll(self.head_dim // 2, -1) * sin  # rotary for queries and keys at once
            q, k = qk[:, :, :heads].transpose(1, 2), qk[:, :, heads:].transpose(1, 2)
            v = qkv[..., q_size + kv_size :].view(batch, width, self.kv_heads, self.head_dim).transpose(1, 2)
            rows = slice(None) if batch == 1 else slice(batch)  # a batch of one (a shared prefix) writes every row
            self.keys[i][rows, ..., start:end] = k.transpose(-1, -2)
            self.values[i][rows, :, start:end] = v
            keys_t, values = self.keys[i][:batch, ..., :end], self.values[i][:batch, :, :end]
            attended = attend(q, keys_t, values, visible, self.head_dim**-0.5)
            attended = attended.transpose(1, 2).reshape(batch, width, q_size)
            x = layer["o"](attended, residual=x)
            h = layer["norm2"](x)
            gate, up = layer["gate_up"](h).chunk(2, dim=-1)
            x = layer["down"](F.silu(gate) * up, residual=x)
        self.filled = end
        return self.lm_head(self.final_norm(x[:, -1]))

    def prefill(self, ids, mask, position_ids, group_size: int, shared: int = 0) -> torch.Tensor:
        """The prompts' pass, their cache copied to each row of a group; the next tokens' logits. With ``shared``,
        the first ``shared`` columns are one prefix common to every row (:func:`~thinktune.modeling.
        prefix_then_left_pad`): it runs once, its keys and values written to every row, and the rows run only
        what follows it (the demo's evaluation batches: 88 of 101 tokens shared, 50 prompts)."""
        rows, columns = (ids.shape[0], self.kv_heads), (self.max_columns, self.head_dim)
        like = {"dtype": self.embed.dtype, "device": ids.device}
        self.filled = 0  # a new cache: the snapshot can serve another batch
        self.keys = [torch.empty(*rows, *columns[::-1], **like) for _ in self.layers]  # transposed: see _forward
        self.values = [torch.empty(*rows, *columns, **like) for _ in self.layers]
        if shared:  # a batch of one: _forward's cache writes reach every row
            self._forward(ids[:1, :shared], mask[:1, :shared], position_ids[:1, :shared])
            ids, position_ids = ids[:, shared:], position_ids[:, shared:]
        logits = self._forward(ids, mask, position_ids)
        self.keys = [k.repeat_interleave(group_size, dim=0) for k in self.keys]
        self.values = [v.repeat_interleave(group_size, dim=0) for v in self.values]
        return logits.repeat_interleave(group_size, dim=0)

    def decode(self, token, mask, position_ids) -> torch.Tensor:
        return self._forward(token[:, None], mask, position_ids)

    def keep(self, rows: torch.Tensor) -> None:
        """The cache's ``rows`` become its first ``len(rows)`` rows. Only rows that change place are copied (the engine
        moves the last live rows into the places of ended ones: a few rows a step instead of every live row), and only
        their columns written so far; the rows past them stay allocated, unread."""
        moved = (rows != torch.arange(len(rows), device=rows.device)).nonzero()[:, 0]
        if len(moved) == 0:
            return
        sources = rows[moved]
        for caches, column_dim in ((self.keys, 3), (self.values, 2)):
            for cache in caches:
                written = cache.narrow(column_dim, 0, self.filled)
                written.index_copy_(0, moved, written.index_select(0, sources))  # the sources copied out first


class Linear:
    """A snapshot's linear layer, ``x @ weight.T + bias``. bfloat16 weights on a CPU are packed once into oneDNN's
    blocked layout (as torch's compiler does for frozen weights), when torch has oneDNN's bfloat16 kernels: every
    decode step then reads them without reordering. A SmolLM2 decode step at 32 rows on an AMD EPYC: its layer matmuls
    33.7 ms through ``F.linear``, 23.3 ms packed, the LM head 8.6 against 5.3 ms, the step 76.5 against 60.1 ms
    (``python benchmarks/op_timings.py``); the result is the same to the bit. ``rows``: the batch the packing is laid
    out for.

    >>> weight, bias = torch.randn(3, 4).bfloat16(), torch.randn(3).bfloat16()
    >>> x = torch.randn(2, 5, 4).bfloat16()
    >>> torch.equal(Linear(weight, bias)(x), F.linear(x, weight, bias))
    True
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int | None = None):
        self.dtype, self.bias = weight.dtype, bias
        self.packed = _onednn_packed(weight, rows)
        self.weight = weight if self.packed is None else None  # the packed copy replaces it

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ weight.T + bias``, plus ``residual`` when given: packed, oneDNN adds it in the same kernel, rounding
        once (a residual connection's add was an op of its own twice a layer)."""
        if self.packed is None:
            out = F.linear(x, self.weight, self.bias)
            return out if residual is None else residual + out
        if residual is None:
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")
        return torch.ops.mkldnn._linear_pointwise.binary(x.contiguous(), residual, self.packed, self.bias, "add")


def _onednn_packed(weight: torch.Tensor, rows: int | None) -> torch.Tensor | None:
    """``weight`` reordered for oneDNN's bfloat16 linear, or None where that does not run (another dtype, a GPU, a
    torch without oneDNN or a CPU without its bfloat16 kernels)."""
    if weight.dtype != torch.bfloat16 or not weight.is_cpu or not torch.backends.mkldnn.is_available():
        return None
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return None
        return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows)
    except (AttributeError, RuntimeError, NotImplementedError):  # an op this torch build lacks
        return None


def sdpa(q, keys_t, v, visible: torch.Tensor, scale: float) -> torch.Tensor:
    """torch's fused attention over keys given transposed (``keys_t`` [B, KV, D, L], as the snapshot caches them);
    ``keys_t`` and ``v`` may hold fewer heads than ``q`` (grouped-query attention)."""
    k = keys_t.transpose(-1, -2).contiguous()  # a prefill: once a rollout
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


def grouped_mask(visible: torch.Tensor, kv_heads: int, dtype: torch.dtype) -> torch.Tensor:
    """A decode step's boolean mask [B, 1, 1, L] as :func:`one_query_attention` adds it to the scores: 0 where
    visible, -inf elsewhere, in ``dtype``, a row for each key/value head of each batch row ([B * KV, 1, L]). Made once
    a step, for every layer.

    >>> grouped_mask(torch.tensor([True, False]).view(1, 1, 1, 2), 2, torch.float32).tolist()
    [[[0.0, -inf]], [[0.0, -inf]]]
    """
    batch, length = visible.shape[0], visible.shape[-1]
    additive = torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(~visible, float("-inf"))
    return additive.expand(batch, kv_heads, 1, length).reshape(batch * kv_heads, 1, length)


def one_query_attention(q, keys_t, v, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of one new token per row (a decode step) as two small batched matmuls and a softmax (computed in
    float32 within torch's kernel), the scale and mask applied by the first matmul.

    ``q`` is [B, H, 1, D]; ``keys_t`` [B, KV, D, L] (keys transposed), ``v`` [B, KV, L, D], query head h reading
    key/value head h // (H / KV); ``mask`` [B * KV, 1, L] is :func:`grouped_mask`'s, made once for every layer of a
    step. On an AMD CPU torch's fused kernel took 4.9 ms a call in bfloat16 at this shape (32 rows, 160 columns)
    against 0.38 ms here (``python benchmarks/op_timings.py``), 30 calls a SmolLM2 decode step. Keys cached
    transposed are read in place when only their first L columns are written: cached as [B, KV, L, D], the matmul
    copied the written columns out first (5 ms of a 59 ms bfloat16 decode step under the profiler; unprofiled the step
    went from 52.8 to 49.8-51.1 ms).

    >>> q, k = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 5, 8)
    >>> visible = torch.tensor([True] * 5 + [False, True, True, True, True]).view(2, 1, 1, 5)
    >>> ours = one_query_attention(q, k.transpose(-1, -2), k, grouped_mask(visible, 2, torch.float32), 0.3)
    >>> torch.allclose(ours, sdpa(q, k.transpose(-1, -2), k, visible, 0.3), atol=1e-6)
    True
    """
    batch, heads, _, dim = q.shape
    kv_heads, length = keys_t.shape[1], keys_t.shape[-1]
    grouped = q.reshape(batch * kv_heads, heads // kv_heads, dim)  # each key/value head's queries side by side
    keys_t, v = keys_t.reshape(batch * kv_heads, dim, length), v.reshape(batch * kv_heads, length, dim)
    weights = torch.baddbmm(mask, grouped, keys_t, alpha=scale).softmax(-1)
    return torch.bmm(weights, v).view(batch, heads, 1, dim)


def _signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """The rotary sine with its first half negated: ``x.roll(D/2) * _signed_sin(sin)`` is Hugging Face's
    ``rotate_half(x) * sin`` to the bit, one op fewer.

    >>> x, sin = torch.randn(3, 8), torch.randn(3, 8)
    >>> halves = torch.cat((-x[:, 4:], x[:, :4]), dim=-1)  # rotate_half
    >>> torch.equal(x.roll(4, -1) * _signed_sin(sin), halves * sin)
    True
    """
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


class RMSNorm:
    """A snapshot of a Llama-family RMSNorm (``weight * x / rms(x)``, computed in float32) as one ``F.rms_norm`` call,
    where Hugging Face's module runs eight ops. Equal to the module to the bit in float32; in bfloat16 it rounds once,
    where the module rounds before multiplying by its weight.

    >>> from transformers.models.llama.modeling_llama import LlamaRMSNorm
    >>> module, x = LlamaRMSNorm(8, eps=1e-5), torch.randn(2, 3, 8)
    >>> torch.equal(RMSNorm(module)(x), module(x))
    True
    """

    def __init__(self, module, dtype: torch.dtype | None = None):
        weight = module.weight.detach()
        self.weight = weight if dtype is None else weight.to(dtype)
        self.eps = module.variance_epsilon

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def make_decoder(model, max_columns: int, fast: bool = True, dtype: torch.dtype | None = None, rows: int | None = None):
    """The fast decoder when asked for and the model's architecture allows it, else the generic one; computing in
    ``dtype`` when given, for a decode batch of ``rows``."""
    if fast and supports_fast_decode(model):
        return LlamaDecoder(model, max_columns, dtype, rows)
    return HFDecoder(model, dtype)
