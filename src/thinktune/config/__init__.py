"""The recipe schema: every section and field, with its meaning, default and bounds. Nothing here imports the rest
of thinktune: :mod:`thinktune.recipe` loads a recipe and checks it against the registries.

Unknown keys, wrong types and impossible values stop with a message naming the key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from thinktune.config.base import EVALUATED, RESUME_SAFE, STAGE_ORDER, ConfigError, _Section, expand_path, tags_of
from thinktune.config.run import EvalConfig, RunConfig
from thinktune.config.sections import DataConfig, FewShot, LoraConfig, ModelConfig, RewardConfig
from thinktune.config.training import (
    GRPOConfig,
    PairsConfig,
    RewardModelConfig,
    RolloutConfig,
    SFTConfig,
    TrainConfig,
)

__all__ = [
    "EVALUATED",
    "RESUME_SAFE",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "FewShot",
    "GRPOConfig",
    "LoraConfig",
    "ModelConfig",
    "PairsConfig",
    "Recipe",
    "RewardConfig",
    "RewardModelConfig",
    "RolloutConfig",
    "RunConfig",
    "SFTConfig",
    "TrainConfig",
    "expand_path",
    "tagged_fields",
]


class Recipe(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rewards: list[RewardConfig] = Field(
        default_factory=lambda: [RewardConfig(name="format"), RewardConfig(name="accuracy")]
    )
    stages: list[Literal["sft", "pairs", "reward_model", "grpo"]] = Field(
        default_factory=lambda: ["grpo"],
        description="What `thinktune train` runs, in this order, in one run directory: e.g. [sft, grpo] or "
        "[pairs, reward_model, grpo].",
    )
    sft: SFTConfig = Field(default_factory=SFTConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    reward_model: RewardModelConfig = Field(default_factory=RewardModelConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        """Checks across sections of this schema; those that need the registries are recipe.validate_recipe's."""
        if not self.stages or self.stages != sorted(set(self.stages), key=STAGE_ORDER.index):
            raise ValueError(f"stages: {self.stages} must name each stage at most once, in the order {STAGE_ORDER}")
        if not self.rewards:
            raise ValueError("rewards: at least one reward is needed")
        if self.model.quantize != "none" and (
            self.rollout.backend != "native" or {"sft", "reward_model"} & {*self.stages}
        ):
            raise ValueError(
                f"model.quantize: {self.model.quantize} trains GRPO adapters with rollout.backend: native (vLLM reads "
                "merged weights; the sft stage merges into its base; the reward model loads its own)"
            )
        if self.eval.worker and not (self.eval.every and self.rollout.backend == "native"):
            raise ValueError(
                "eval.worker: true evaluates the eval.every steps (set eval.every > 0) with rollout.backend: native "
                f"(this recipe: eval.every {self.eval.every}, rollout.backend {self.rollout.backend})"
            )
        if self.eval.split == "validation" and not self.data.validation_size:
            raise ValueError("eval.split: validation needs data.validation_size > 0")
        return self

    @property
    def batch_size(self) -> int:
        """Completions per step."""
        return self.grpo.prompts_per_step * self.grpo.group_size


def tagged_fields(tag: str, section: type[BaseModel] = Recipe, prefix: str = "") -> list[str]:
    """Every recipe field carrying ``tag``, dotted, in schema order (nested sections searched).

    >>> tagged_fields(EVALUATED)[:4]
    ['model.name', 'model.dtype', 'model.quantize', 'data.source']
    """
    found = []
    for name, info in section.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, _Section):
            found += tagged_fields(tag, info.annotation, f"{prefix}{name}.")
        elif tag in tags_of(section, name):
            found.append(prefix + name)
    return found
