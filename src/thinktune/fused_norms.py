"""Llama-family RMSNorms through torch's fused kernel when a model trains in float32 on a CPU.

transformers' ``LlamaRMSNorm`` runs its formula as six ops forward (widen, square, mean, add, rsqrt, two products)
and autograd runs each one's backward; ``F.rms_norm`` computes the same float32 result in one kernel, forward and
backward. SmolLM2 has 61 norms a pass: at 1600 positions one took 8.5-9.1 ms forward and backward through
transformers' module against 3.5-5.5 ms fused here (a micro-benchmark, two runs). Under ``train.autocast`` the
residual stream a norm reads stays float32, so the same holds there. Other dtypes keep the module's own forward.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from thinktune.modeling import FAST_MODEL_TYPES, base_model


def fused_rms_norm(module, hidden_states: torch.Tensor) -> torch.Tensor:
    """``module``'s RMSNorm of float32 ``hidden_states`` as one ``F.rms_norm``; else the module's own forward.

    >>> from transformers.models.llama.modeling_llama import LlamaRMSNorm
    >>> module, x = LlamaRMSNorm(8, eps=1e-5), torch.randn(2, 3, 8)
    >>> _ = module.weight.data.normal_()
    >>> torch.equal(fused_rms_norm(module, x), module(x))
    True
    """
    if hidden_states.dtype != torch.float32 or module.weight.dtype != torch.float32:
        return type(module).forward(module, hidden_states)
    return F.rms_norm(hidden_states, module.weight.shape, module.weight, module.variance_epsilon)


def use_fused_norms(model) -> None:
    """On a CPU, every RMSNorm of a Llama-family ``model`` (Llama, SmolLM, Qwen2, Qwen3) runs through
    :func:`fused_rms_norm`; other architectures and devices are left as they are. Nothing saved changes."""
    config = getattr(base_model(model), "config", None)
    if getattr(config, "model_type", None) not in FAST_MODEL_TYPES or next(model.parameters()).device.type != "cpu":
        return
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(fused_rms_norm, module)
