"""The memory savers: activation checkpointing (``train.gradient_checkpointing``), 8-bit optimizer state
(``train.optimizer: adamw_8bit``) and a 4-bit NF4 base under LoRA (``model.quantize: nf4``, QLoRA).

The last two run on bitsandbytes, an optional extra (``pip install 'thinktune[savers]'``), on CPUs and CUDA alike;
asking for them without it is a one-line error naming the field and the install command.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.utils.checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

from thinktune.config import ConfigError
from thinktune.modeling import base_model


def bitsandbytes(field: str):
    """The bitsandbytes module, or a :class:`ConfigError` naming ``field`` and the install command."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ConfigError(f"{field} needs bitsandbytes: pip install 'thinktune[savers]'") from None
    return bnb


@contextlib.contextmanager
def checkpointed_layers(model, enabled: bool = True):
    """Inside: each decoder layer keeps only its input for the backward pass and runs its forward again there
    (activation checkpointing, ``train.gradient_checkpointing``), trading about one more forward for the layer's
    activations. The gradients are those without it.

    Unlike Hugging Face's own switch, a layer keeps its KV cache: the shared-prompt completion pass reads the prompts'
    keys and values from a :func:`prefix_cache`, which its replay reads the same way. A pass that *writes* a cache
    (the prompt encoding) must run outside.
    """
    layers = [m for m in base_model(model).modules() if isinstance(m, GradientCheckpointingLayer)] if enabled else []
    for layer in layers:
        layer.forward = functools.partial(_replayed, layer.forward)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # the class's forward again


def _replayed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
