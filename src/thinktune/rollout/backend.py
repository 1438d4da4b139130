"""The rollout backend protocol: prompt ids and sampling settings in, a :class:`Rollout` out.

Training, evaluation, preference pairs and ``thinktune generate`` all sample through a backend, so an engine
that lives outside the policy (vLLM, a server) plugs in at one place. Such an engine holds its own copy of the
weights; the trainer calls ``weights_changed()`` after every optimizer step so it can refresh that copy.

    backend = make_backend("native", model, tokenizer)
    rollout = backend.generate(prompt_ids, SamplingParams(max_new_tokens=64, group_size=8, temperature=0.7))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from thinktune.config import RolloutConfig
from thinktune.environment import bf16_pays
from thinktune.registry import Registry
from thinktune.rollout.engine import Rollout, generate
from thinktune.rollout.vllm_backend import VllmBackend
from thinktune.tokens import eos_token_ids


@dataclass(frozen=True)
class SamplingParams:
    """How completions are drawn: ``group_size`` per prompt, greedy or at ``temperature`` with top-k/top-p."""

    max_new_tokens: int
    group_size: int = 1
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    ignore_eos: bool = False  # every completion runs to max_new_tokens (the plan's worst case)

    @classmethod
    def of_recipe(cls, grpo, group_size: int | None = None, max_new_tokens: int | None = None) -> SamplingParams:
        """The recipe's rollout sampling (``grpo`` section), optionally with another group size or budget."""
        return cls(
            max_new_tokens=max_new_tokens or grpo.max_new_tokens,
            group_size=group_size or grpo.group_size,
            temperature=grpo.temperature,
            top_k=grpo.top_k,
            top_p=grpo.top_p,
        )


class RolloutBackend(Protocol):
    tokenizer: object
    device: torch.device  # where sampling draws its random numbers: a generator passed in must live there
    exact_logprobs: bool  # the rollout's log-probs are the trainer's own (else the update takes the trainer's)

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, generator: torch.Generator | None = None
    ) -> Rollout:
        """``params.group_size`` completions per prompt; row ``i`` belongs to prompt ``i // group_size``."""

    def weights_changed(self) -> None:
        """The policy's weights were updated: sample from the new ones from now on."""


def sampling_dtype(choice: str, device: torch.device, model_dtype: torch.dtype) -> torch.dtype | None:
    """The dtype ``rollout.dtype`` samples in on ``device``; None for the model's own. ``auto`` takes bfloat16
    where it pays, measured on the machine at run time (:func:`~thinktune.environment.bf16_pays`)."""
    if choice == "auto":
        choice = "bfloat16" if bf16_pays(device) else "model"
    return torch.bfloat16 if choice == "bfloat16" and model_dtype != torch.bfloat16 else None


class NativeBackend:
    """The in-process KV-cached decoder (:mod:`thinktune.rollout.engine`), reading the policy's live weights, in
    the policy's dtype or ``rollout.dtype``'s."""

    def __init__(self, model, tokenizer, cfg: RolloutConfig | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids = eos_token_ids(tokenizer)
        parameter = next(model.parameters())
        self.dtype = sampling_dtype(cfg.dtype if cfg else "model", parameter.device, parameter.dtype)
        self.exact_logprobs = self.dtype is None  # else the update takes its own, at the policy's dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, generator: torch.Generator | None = None
    ) -> Rollout:
        return generate(
            self.model,
            prompts,
            eos_ids=[] if params.ignore_eos else self.eos_ids,
            pad_id=self.tokenizer.pad_token_id,
            max_new_tokens=params.max_new_tokens,
            group_size=params.group_size,
            greedy=params.greedy,
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            generator=generator,
            dtype=self.dtype,
        )

    def weights_changed(self) -> None:
        pass  # the decoder reads the model's parameters at every call


BACKENDS = Registry("rollout.backend", {"native": NativeBackend, "vllm": VllmBackend})


def make_backend(cfg: RolloutConfig | str, model, tokenizer) -> RolloutBackend:
    """The backend the recipe's ``rollout`` section (or just a backend's name) asks for, sampling from ``model``."""
    cfg = RolloutConfig(backend=cfg) if isinstance(cfg, str) else cfg
    return BACKENDS.lookup(cfg.backend)(model, tokenizer, cfg)


def evaluation_backend(recipe, model, tokenizer, running: RolloutBackend | None = None) -> RolloutBackend:
    """What evaluations of ``model`` sample with: the recipe's rollout backend (``running``, where training has
    one up), or with ``eval.dtype: model`` and the native sampler, one in the policy's own dtype."""
    if recipe.eval.dtype == "model" and recipe.rollout.backend == "native":
        return NativeBackend(model, tokenizer)
    return running or make_backend(recipe.rollout, model, tokenizer)
