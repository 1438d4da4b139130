"""The recipe schema: every section and field, with its meaning, default and bounds. Nothing here imports the rest
of thinktune: :mod:`thinktune.recipe` loads a recipe and checks it against the registries.

Unknown keys, wrong types and impossible values stop with a message naming the key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

STAGE_ORDER = ["sft", "pairs", "reward_model", "grpo"]
MAX_RUN_NAME = 200


class ConfigError(ValueError):
    """A recipe that cannot run, with a message naming the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def expand_path(text: str) -> str:
    """``~`` and environment variables expanded, as a shell would have done had the path not been quoted.

    >>> os.environ["THINKTUNE_DOCTEST"] = "/data"
    >>> expand_path("$THINKTUNE_DOCTEST/runs"), expand_path("~/x") == os.path.expanduser("~") + "/x"
    ('/data/runs', True)
    """
    return os.path.expandvars(os.path.expanduser(text))


def _expanded(path: str | None) -> str | None:
    """A path field as a shell would have read it: ``~`` and ``$VARS`` expanded (never a folder named ``~``)."""
    return None if path is None else expand_path(path)


class LoraConfig(_Section):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Modules that get adapters; 'all-linear' = every linear layer but the LM head.",
    )


class ModelConfig(_Section):
    name: str = Field(
        "smollm2-135m-instruct",
        description="A local HF folder, a hub id (online only) or a packaged alias (smollm2-135m-instruct).",
    )
    finetune: Literal["lora", "full"] = Field("lora", description="Train LoRA adapters or every weight.")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="'auto' picks CUDA, then Apple MPS, then CPU."
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Weights and compute precision. bf16 pays on GPUs; fp32 is the safe CPU default.",
    )

    _expand_name = field_validator("name")(_expanded)


class FewShot(_Section):
    question: str = Field(description="An example question.")
    response: str = Field(description="The ideal response to it, in the answer format.")


class DataConfig(_Section):
    source: str = Field(
        "reasoning_gym",
        description="Where examples come from: reasoning_gym (a generated task), file (a table with a column mapping), "
        "chat (a file of conversations: a 'messages' column of role/content turns), a named dataset read from "
        "data.path in its own schema or, online, from the hub (gsm8k, cooking_cot, openr1_math, numina_tir, "
        "smoltldr), or passages of a packaged public-domain story to summarise (offline, no reference summary).",
    )
    hub_id: str | None = Field(
        None, description="Hub dataset id of a named source without data.path (default: the dataset's usual id)."
    )
    task: str | None = Field(
        None, description="reasoning-gym task name (source=reasoning_gym; basic_arithmetic when not given)."
    )
    task_config: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the reasoning-gym task's config."
    )
    train_size: int = Field(1000, gt=0, description="Training examples generated (reasoning_gym, passages).")
    eval_size: int = Field(200, ge=0, description="Held-out examples, disjoint from training.")
    validation_size: int = Field(
        0,
        ge=0,
        description="Validation examples, disjoint from training and held-out: the split settings are chosen on "
        "(eval.split=validation, `thinktune sweep`), so the held-out set is used once, by the final recipe. "
        "reasoning-gym draws them from seed + 2_000_006; files take the last rows before the held-out ones.",
    )
    seed: int = Field(0, description="Seed of the generated training set; the eval set uses seed + 1_000_003.")
    path: str | None = Field(
        None, description="Training file: .jsonl, .json, .csv or .parquet (source=file or a named dataset)."
    )
    eval_path: str | None = Field(
        None, description="Held-out file; if absent, the last eval_size rows of `path` are held out."
    )
    columns: dict[str, str] = Field(
        default_factory=lambda: {"question": "question", "answer": "answer"},
        description="Maps thinktune fields (question, answer) to the file's column names.",
    )
    system_prompt: str | None = Field(
        None, description="System message; default explains the answer format. Use '' for none."
    )
    fewshot: list[FewShot] = Field(
        default_factory=list,
        description="Worked examples put in the chat before each question (user/assistant turns).",
    )
    answer_format: Literal["xml", "think"] = Field(
        "xml",
        description="xml: <reasoning>…</reasoning><answer>…</answer>; think: <think>…</think> then the answer.",
    )
    max_prompt_tokens: int = Field(256, gt=0, description="Prompt budget in tokens.")
    overlong_prompts: Literal["truncate", "skip"] = Field(
        "skip",
        description="What to do with a prompt over the budget: cut from the left, or drop it. Counted.",
    )

    _expand_paths = field_validator("path", "eval_path")(_expanded)

    @model_validator(mode="before")
    @classmethod
    def _default_task(cls, values: Any) -> Any:
        if (
            isinstance(values, dict)
            and values.get("source", "reasoning_gym") == "reasoning_gym"
            and "task" not in values
        ):
            values = {**values, "task": "basic_arithmetic"}
        return values


class RewardConfig(_Section):
    name: str = Field(
        description="Registered reward (format, format_soft, tag_count, accuracy, gsm8k_strict, gsm8k_flexible, "
        "numeric_closeness, integer, length_chars, length_tokens, overlong, reward_model, task_score) "
        "or 'pkg.module:function'."
    )
    weight: float = Field(1.0, description="Weight in the summed reward.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments bound to the function.")
    timeout: float | None = Field(
        60.0,
        gt=0,
        description="Seconds one call of a user's function (an import path or a Python callable) may take; past "
        "it the call is abandoned, its batch scores None from this function, and it is counted "
        "(reward_timeouts); a step whose every call times out stops the run. None: called directly, unbounded "
        "(e.g. to step through it in a debugger). thinktune's own rewards are bounded per completion instead "
        "(the grader process).",
    )


class GRPOConfig(_Section):
    group_size: int = Field(8, ge=2, description="Completions sampled per prompt (G).")
    prompts_per_step: int = Field(4, gt=0, description="Prompts per optimizer step; batch = prompts × G.")
    max_new_tokens: int = Field(128, gt=0, description="Completion budget; longer completions are truncated.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of rollouts (and of log-probs).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, description="Top-k sampling; 0 = off.")
    epsilon: float = Field(0.2, ge=0, description="Lower clip range of the ratio: 1 - epsilon.")
    epsilon_high: float | None = Field(None, ge=0, description="Upper clip range 1 + epsilon_high; None = epsilon.")
    beta: float = Field(0.0, ge=0, description="Weight of the k3 KL penalty to the reference policy.")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="What divides the centred rewards: the group's std (GRPO), the whole batch's std (TRL's batch), "
        "or nothing (Dr. GRPO). The group's mean is subtracted either way.",
    )
    loss: str = Field(
        "token",
        description="token (every token of the step weighs the same; TRL dapo), sequence (each completion's mean, "
        "then the mean over completions; TRL grpo), dr_grpo (token sums / (completions × max_new_tokens)), or cispo "
        "(a policy gradient with the importance weight clipped at 1 + epsilon_high and stopped, averaged by tokens).",
    )
    importance_sampling: Literal["token", "sequence"] = Field(
        "token",
        description="token: one ratio per token; sequence: one per completion, exp of its tokens' mean log-ratio, "
        "clipped as a whole (GSPO).",
    )
    top_entropy_quantile: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Train only on the tokens whose entropy is in this top share of each micro-batch's tokens "
        "(0.2: the 20% most uncertain, 'forking' tokens); 1.0 = every token.",
    )
    iterations: int = Field(1, ge=1, description="Policy updates per generation (μ).")
    micro_batch_size: int = Field(8, gt=0, description="Sequences per forward/backward pass.")
    mask_truncated: bool = Field(
        False, description="Exclude truncated completions from the loss (they still count in metrics)."
    )
    dynamic_sampling: bool = Field(
        False,
        description="DAPO's dynamic sampling: drop groups whose rewards are all equal (they carry no gradient) and "
        "draw more prompts until the step has prompts_per_step groups with spread, or max_sampling_rounds is hit.",
    )
    max_sampling_rounds: int = Field(
        4,
        ge=1,
        description="Rollout rounds per step at most under dynamic_sampling; a step still short trains "
        "on the groups it has (counted as sampling_shortfall).",
    )
    curriculum: Literal["none", "pass_rate"] = Field(
        "none",
        description="Prompt choice. pass_rate: keep each prompt's running pass rate p (share of its group "
        "that was right, averaged with earlier visits) and draw a seen prompt with weight "
        "max(4p(1-p), curriculum_floor), so prompts "
        "the model sometimes but not always solves come first; unseen prompts have weight 1.",
    )
    curriculum_floor: float = Field(
        0.1, gt=0, le=1, description="Least draw weight of a prompt last seen all right or all wrong."
    )

    @field_validator("scale_rewards", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"is now group, batch or none ({str(value).lower()} was {'group' if value else 'none'})")
        return value


class RolloutConfig(_Section):
    backend: Literal["native", "vllm"] = Field(
        "native",
        description="What samples completions in training, evaluation and pairs: native = thinktune's in-process "
        "KV-cached decoder on the policy's own weights; vllm = a vLLM engine in this process, the policy's weights "
        "pushed into it after every update (optional extra).",
    )
    vllm_memory: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="With backend vllm: the share of the device's memory (on CPU, of RAM) the engine reserves for "
        "its weights and KV cache. vLLM's own default (0.9) leaves no room for the policy beside it.",
    )
    correction: Literal["recompute", "tis", "icepop"] = Field(
        "recompute",
        description="Where the sampler's log-probs are not the trainer's (vLLM, train.autocast bf16), the old "
        "log-probs are recomputed by the trainer; tis also weighs each token's policy term by the trainer/sampler "
        "probability ratio truncated at correction_clip (truncated importance sampling); icepop instead drops "
        "the tokens whose ratio is outside [1 / correction_clip, correction_clip]. Logged: correction_weight, "
        "correction_masked.",
    )
    correction_clip: float = Field(3.0, gt=1, description="The bound of rollout.correction (TRL's default C_max).")
    vllm_weights: Literal["merged", "lora"] = Field(
        "merged",
        description="With backend vllm, how the policy's new weights reach the engine after each update: merged = "
        "LoRA folded into the weights, which are copied in; lora = the adapter saved and served by vLLM's LoRA "
        "support (LoRA policies only). benchmarks/vllm_cpu.py measures both.",
    )


class TrainConfig(_Section):
    steps: int = Field(100, gt=0, description="Optimizer steps (each one a fresh generation).")
    learning_rate: float = Field(1e-5, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = Field((0.9, 0.99))
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="Decay after warmup.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    max_nonfinite_steps: int = Field(
        3,
        ge=1,
        description="An optimizer step whose loss or gradient norm is NaN/inf is skipped (weights and optimizer "
        "state untouched) and counted (nonfinite_skipped); this many in a row stop the run.",
    )
    seed: int = Field(0, description="Seed of sampling, prompt order and initialisation.")
    autocast: Literal["none", "bf16"] = Field(
        "none",
        description="bf16 = the update's forward and backward matmuls in bfloat16 (weights and optimizer stay "
        "float32); the old log-probs are then recomputed the same way and their gap to the sampler's logged "
        "(logprob_mismatch). Pays on GPUs and on CPUs with AMX (amx_bf16 in lscpu); slower than float32 on CPUs "
        "without it. Measure with benchmarks/autocast.py.",
    )


class SFTConfig(_Section):
    completion: str = Field(
        "{answer}",
        description="Target response, a Python format string over the example's fields: {question}, {answer}, "
        "any column, and nested ones like {metadata[answer_cot]}. Write it in the answer format, e.g. "
        "'<reasoning>\\n{solution}\\n</reasoning>\\n<answer>\\n{answer}\\n</answer>'.",
    )
    steps: int = Field(100, gt=0, description="Optimizer steps.")
    batch_size: int = Field(8, gt=0, description="Examples per optimizer step.")
    learning_rate: float = Field(1e-4, gt=0, description="Peak AdamW learning rate (linear warmup, then constant).")
    warmup_steps: int = Field(0, ge=0)
    max_completion_tokens: int = Field(
        256, gt=0, description="Longer targets are skipped (counted), never cut: a cut target teaches no ending."
    )


class PairsConfig(_Section):
    out: str | None = Field(None, description="Output JSONL; None = <run>/pairs.jsonl.")
    rejected_system_prompt: str = Field(
        "Answer with the final answer only, without any explanation.",
        description="System message under which the model writes the rejected side (a direct answer).",
    )
    max_new_tokens: int = Field(64, gt=0, description="Budget of the rejected answer.")
    batch_size: int = Field(32, gt=0, description="Questions per greedy generation batch.")
    limit: int | None = Field(None, gt=0, description="Use only the first N training examples.")

    _expand_out = field_validator("out")(_expanded)


class RewardModelConfig(_Section):
    pairs: str | None = Field(
        None,
        description="Preference pairs: JSONL/CSV/Parquet with prompt, chosen, rejected; None = the file "
        "`thinktune pairs` writes (pairs.out, else <run>/pairs.jsonl).",
    )
    eval_pairs: int = Field(50, ge=1, description="Pairs held out (the file's last rows) for pair accuracy.")
    steps: int = Field(100, gt=0, description="Optimizer steps.")
    batch_size: int = Field(8, gt=0, description="Pairs per optimizer step.")
    micro_batch_size: int = Field(
        2, gt=0, description="Pairs per forward/backward pass; lower it if memory runs short (same gradient)."
    )
    learning_rate: float = Field(1e-4, gt=0)
    max_length: int = Field(512, gt=0, description="Tokens of prompt + response; longer ones are cut from the left.")

    _expand_pairs = field_validator("pairs")(_expanded)


class EvalConfig(_Section):
    before: bool = Field(True, description="Evaluate the starting model before training.")
    after: bool = Field(True, description="Evaluate the trained model after training.")
    every: int = Field(0, ge=0, description="Also evaluate every N steps; 0 = off.")
    split: Literal["held_out", "validation"] = Field(
        "held_out",
        description="What evaluations grade: the held-out set (the final, once-only measure) or the validation "
        "set (data.validation_size) for choosing settings.",
    )
    samples: int = Field(
        0,
        ge=0,
        description="Also draw k completions per problem at grpo.temperature and report mean@k, pass@j, maj@k "
        "and the share of problems all wrong / all right in k samples; 0 = greedy only.",
    )
    seed: int = Field(0, description="Seed of the sampled evaluation (the same for before and after).")
    max_new_tokens: int | None = Field(None, gt=0, description="Completion budget; None = grpo.max_new_tokens.")
    batch_size: int = Field(32, gt=0, description="Prompts per greedy generation batch.")
    best_metric: Literal["accuracy", "format_accuracy", "reward"] = Field(
        "accuracy",
        description="With eval.every: the trained model scoring best on it so far is kept in best/ (best.json says "
        "when); its fall between two evaluations (paired sign test, p < 0.05) while the training reward rises "
        "raises the regression alarm.",
    )
    stop_on_regression: bool = Field(
        False, description="Stop GRPO at the regression alarm (then save final/ and evaluate as usual)."
    )


class RunConfig(_Section):
    name: str = Field(
        "run",
        description="Run directory name under output_dir: a plain folder name (letters, digits, _ . = , + -; not "
        "dots alone; at most 200 characters).",
    )
    output_dir: str = Field("runs", description="Parent folder of run directories (~ and $VARS are expanded).")
    samples_per_step: int = Field(
        2,
        ge=-1,
        description="Groups whose every completion (with each reward, advantage, length, truncation) is logged "
        "each step to samples.jsonl and the trackers' completion tables; -1 = every group, 0 = none.",
    )
    save_every: int = Field(
        10, ge=0, description="Checkpoint every N steps for --resume (and at the end); 0 = only at the end."
    )
    save_minutes: float = Field(
        10.0,
        ge=0,
        description="Also checkpoint (GRPO, SFT, reward model) when this many minutes passed since the last "
        "checkpoint; 0 = off.",
    )
    keep_checkpoints: int = Field(
        2, ge=1, description="Checkpoints kept per stage, newest first; an unreadable one falls back to the next."
    )
    threads: int | None = Field(None, gt=0, description="torch CPU threads; None = torch's default.")
    report_to: list[Literal["jsonl", "tensorboard", "wandb", "trackio"]] = Field(
        default_factory=lambda: ["jsonl"],
        description="Where metrics go while training: jsonl = metrics.jsonl, samples.jsonl, eval_curve.jsonl "
        "and the SFT / reward-model metrics files in the run directory (always written); tensorboard, wandb, "
        "trackio = those libraries (pip install 'thinktune[tensorboard]' etc.).",
    )

    _expand_output_dir = field_validator("output_dir")(_expanded)

    @property
    def path(self) -> Path:
        """The run folder, ``output_dir/name``: the one place its path is put together."""
        return Path(self.output_dir) / self.name

    @field_validator("name")
    @classmethod
    def _plain_folder_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.=,+-]+", name) or not name.strip("."):
            raise ValueError(f"must be a plain folder name (letters, digits, _ . = , + -), got {name!r}")
        if len(name) > MAX_RUN_NAME:  # the folder's own files add suffixes (final.partial) within the OS's 255
            raise ValueError(f"at most {MAX_RUN_NAME} characters, got {len(name)}")
        return name


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
        if self.eval.split == "validation" and not self.data.validation_size:
            raise ValueError("eval.split: validation needs data.validation_size > 0")
        return self

    @property
    def batch_size(self) -> int:
        """Completions per step."""
        return self.grpo.prompts_per_step * self.grpo.group_size
