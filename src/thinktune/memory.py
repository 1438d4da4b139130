"""``thinktune memory``: what a recipe should need in device memory, estimated from the model's architecture.

An estimate, by arithmetic, of the tensors a GRPO step holds at its peak, not a measurement:

- always: the weights; the trained parameters' gradients and AdamW's two moments (LoRA adapters are kept in
  float32 by peft, 16 bytes per trained parameter; full fine-tuning keeps them in the weights' precision); a
  reference copy of the weights when full fine-tuning has a KL term; under ``train.autocast: bf16`` (or ``auto``,
  counted as if it took bf16) a LoRA run's bfloat16 copies of its frozen float32 linear weights and head (2 bytes
  each, made once instead of every pass);
- then the larger of two passes, which never overlap: sampling (the decoder's merged, fused copy of the linear
  weights, the KV cache of every completion of the step at full length, and a row of logits each) and the update
  (one micro-batch's saved activations at full length, as many rows as ``grpo.micro_batch_tokens`` lets in, per
  layer and token: the norms' inputs and outputs, q, k, v and the attention output, gate, up, their product and
  the activation; the LM head's logits a 64 MB chunk at a time, in forward and backward, and the forward's kept
  for the backward where they take at most 512 MB).

The memory savers change three parts: ``model.quantize: nf4`` the linear weights (about 0.56 bytes each) and the
sampling copy (none), ``train.optimizer: adamw_8bit`` the moments (2 bytes a trained parameter), and
``train.gradient_checkpointing`` the update's activations (each layer's input, plus one layer's activations).

The CUDA context and the allocator's slack come on top (typically 0.5-1 GB).
"""

from __future__ import annotations

from dataclasses import dataclass

from thinktune.config import Recipe
from thinktune.logits import CHUNK_ELEMENTS, KEEP_LOGITS_BYTES

GB = 1e9


@dataclass(frozen=True)
class Architecture:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def of(cls, config) -> Architecture:
        """From a transformers config (or anything with its attribute names)."""
        heads = config.num_attention_heads
        return cls(
            layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            vocab=config.vocab_size,
            tied=bool(getattr(config, "tie_word_embeddings", False)),
        )

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of one layer's linear projections: q, k, v, o, gate, up, down."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    def parameters(self) -> int:
        """Every weight: embeddings, the LM head unless tied, the layers' projections and norms.

        >>> Architecture(1, 4, 8, 2, 1, 2, 10, tied=True).parameters()  # 40 + (16+8+8+16+96) + 8 + 4 (norms)
        196
        """
        linear = sum(a * b for a, b in self.linear_shapes())
        return (
            self.vocab * self.hidden * (1 if self.tied else 2) + self.layers * (linear + 2 * self.hidden) + self.hidden
        )

    def lora_parameters(self, rank: int) -> int:
        """LoRA on every linear layer but the head: r x (in + out) per projection."""
        return self.layers * sum(rank * (a + b) for a, b in self.linear_shapes())


def estimate(recipe: Recipe, arch: Architecture, prompt_tokens: int | None = None) -> dict[str, float]:
    """The parts of a GRPO step's peak, in GB, and their ``total`` (see the module doc), with prompts of
    ``prompt_tokens`` (default: the budget, ``data.max_prompt_tokens``)."""
    width = 2 if recipe.model.dtype == "bfloat16" else 4
    g, t = recipe.grpo, recipe.train
    params = arch.parameters()
    linear = arch.layers * sum(a * b for a, b in arch.linear_shapes())
    nf4 = recipe.model.quantize == "nf4"  # 4 bits a linear weight and a float32 scale per 64 of them
    parts = {"weights": ((params - linear) * width + linear * (0.5 + 4 / 64 if nf4 else width)) / GB}
    moments = 2 if t.optimizer == "adamw_8bit" else None  # bytes per trained parameter: two 8-bit moments
    if recipe.model.finetune == "lora":  # peft keeps adapters in float32: weight, gradient, two moments
        parts["trained state (grad + AdamW)"] = arch.lora_parameters(recipe.model.lora.r) * (8 + (moments or 8)) / GB
    else:
        parts["trained state (grad + AdamW)"] = params * (width + (moments or 2 * width)) / GB
        if g.beta > 0:
            parts["reference weights"] = params * width / GB
    if t.autocast != "none" and recipe.model.finetune == "lora" and width == 4 and not nf4:
        parts["bfloat16 copies of the frozen weights"] = (linear + arch.vocab * arch.hidden) * 2 / GB  # + the head
    length = (prompt_tokens or recipe.data.max_prompt_tokens) + g.max_new_tokens
    rows = g.prompts_per_step * g.group_size
    kv = arch.layers * 2 * arch.kv_heads * arch.head_dim * width
    merged_copy = 0 if nf4 else linear * width  # a 4-bit base samples through its own kernels, without a copy
    sampling = (merged_copy + rows * length * kv + rows * arch.vocab * 4) / GB
    q, kvd = arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
    per_layer = width * (4 * arch.hidden + 2 * q + 2 * kvd + 4 * arch.intermediate) + 8 * arch.hidden
    # with activation checkpointing every layer keeps its input, and one layer at a time its activations
    per_token = arch.layers * width * arch.hidden + per_layer if t.gradient_checkpointing else arch.layers * per_layer
    tokens = min(g.full_length_rows_a_pass(), rows) * length  # a pass holds at most the step's rows
    head = 3 * 4 * min(CHUNK_ELEMENTS, tokens * arch.vocab)  # logits, their exp, their gradient
    head += min(tokens * arch.vocab * width, KEEP_LOGITS_BYTES)  # at most: the forward's, kept for the backward
    update = (tokens * per_token + head) / GB
    parts["sampling pass" if sampling >= update else "update pass"] = max(sampling, update)
    parts["total"] = sum(parts.values())
    return parts
