"""How the recipe trains: the GRPO, rollout and optimizer sections, and the SFT, pairs and reward-model stages."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from thinktune.config.base import EVALUATED, RESUME_SAFE, _expanded, _Section, tagged


class GRPOConfig(_Section):
    group_size: int = Field(8, ge=2, description="Completions sampled per prompt (G).")
    prompts_per_step: int = Field(4, gt=0, description="Prompts per optimizer step; batch = prompts × G.")
    max_new_tokens: int = Field(
        128,
        gt=0,
        description="Completion budget; longer completions are truncated.",
        json_schema_extra=tagged(EVALUATED),
    )
    temperature: float = Field(
        1.0,
        gt=0,
        description="Sampling temperature of rollouts (and of log-probs).",
        json_schema_extra=tagged(EVALUATED),
    )
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.", json_schema_extra=tagged(EVALUATED))
    top_k: int = Field(0, ge=0, description="Top-k sampling; 0 = off.", json_schema_extra=tagged(EVALUATED))
    ignore_eos: bool = Field(
        False,
        description="Every training completion runs to max_new_tokens: end-of-sequence tokens are sampled and passed "
        "over, and the rewards see the whole text. For fixed-length throughput measurements (TRL's min_new_tokens; "
        "benchmarks/bench.py --fixed-length); evaluations still stop at the end token.",
    )
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
    micro_batch_size: int = Field(8, gt=0, description="Sequences per forward/backward pass, at most.")
    micro_batch_tokens: int | None = Field(
        None,
        gt=0,
        description="Completion tokens (rows x the longest completion) per forward/backward pass, at most: rows "
        "sorted by length fill passes up to it and micro_batch_size, so long completions run fewer to a pass and "
        "short ones many. The gradient is the step's either way (top_entropy_quantile picks within a pass); lower "
        "it if the update runs out of memory. Only completion tokens count: prompts are encoded once per update, or, "
        "where they cannot be (an LM head that is not plain), ride along uncounted with their rows. None = "
        "micro_batch_size rows whatever their length.",
    )
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

    def full_length_rows_a_pass(self) -> int:
        """Completions of ``max_new_tokens`` tokens one update pass takes: ``micro_batch_size``, fewer under
        ``micro_batch_tokens`` (at least one).

        >>> GRPOConfig(max_new_tokens=256, micro_batch_size=8, micro_batch_tokens=600).full_length_rows_a_pass()
        2
        """
        if self.micro_batch_tokens is None:
            return self.micro_batch_size
        return min(self.micro_batch_size, max(1, self.micro_batch_tokens // self.max_new_tokens))

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
        json_schema_extra=tagged(EVALUATED),
    )
    dtype: Literal["model", "bfloat16", "auto"] = Field(
        "model",
        description="What the native sampler computes in: model = the policy's own dtype (its log-probs are the "
        "trainer's); bfloat16 = weights, cache and matmuls in bfloat16, the old log-probs then the update's own at "
        "the policy's dtype and their gap logged (logprob_mismatch); auto = bfloat16 where it pays (a CUDA device, or "
        "a CPU whose bfloat16 matmuls time at least 1.4x float32's when the run starts), else model. Evaluations "
        "sample the same way unless eval.dtype is model. Some CPUs with avx512_bf16 but no AMX run bfloat16 "
        "slower than float32.",
        json_schema_extra=tagged(EVALUATED),
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
        "log-probs are the trainer's (its update's first forward); tis also weighs each token's policy term by "
        "the trainer/sampler probability ratio truncated at correction_clip (truncated importance sampling); "
        "icepop instead drops the tokens whose ratio is outside [1 / correction_clip, correction_clip]. Logged: "
        "correction_weight, correction_masked.",
    )
    correction_clip: float = Field(3.0, gt=1, description="The bound of rollout.correction (TRL's default C_max).")
    vllm_weights: Literal["merged", "lora"] = Field(
        "merged",
        description="With backend vllm, how the policy's new weights reach the engine after each update: merged = "
        "LoRA folded into the weights, which are copied in; lora = the adapter saved and served by vLLM's LoRA "
        "support (LoRA policies only). benchmarks/vllm_cpu.py measures both.",
    )


class TrainConfig(_Section):
    steps: int = Field(
        100, gt=0, description="Optimizer steps (each one a fresh generation).", json_schema_extra=tagged(RESUME_SAFE)
    )
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
        json_schema_extra=tagged(RESUME_SAFE),
    )
    seed: int = Field(0, description="Seed of sampling, prompt order and initialisation.")
    autocast: Literal["none", "bf16", "auto"] = Field(
        "none",
        description="bf16 = the training passes' forward and backward matmuls in bfloat16 (GRPO's update, SFT and "
        "the reward model; weights and optimizer stay float32); the old log-probs are then the update's, computed "
        "the same way, and their gap to the sampler's logged (logprob_mismatch). auto = bf16 where it pays, as "
        "rollout.dtype auto decides (a CUDA device, or a CPU whose bf16 matmuls time at least 1.4x faster), else "
        "none. On CPUs with bf16 instructions (avx512_bf16 or amx_bf16 in lscpu) attention stays float32 and SFT "
        "and reward-model steps run 1.5-2x faster. Measure with benchmarks/stage_steps.py and "
        "benchmarks/autocast.py.",
    )
    optimizer: Literal["adamw", "adamw_8bit"] = Field(
        "adamw",
        description="adamw = torch's AdamW (float32 moments, 8 bytes per trained weight); adamw_8bit = bitsandbytes' "
        "blockwise 8-bit AdamW (about 2 bytes; tensors under 4,096 elements stay float32), on CPUs and CUDA "
        "(pip install 'thinktune[savers]'). Its state goes into checkpoints, and a resume is exact.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Keep only each decoder layer's input for the backward pass and run its forward again there: "
        "the update's activations shrink to one layer's at a time, for about a third more update time. The "
        "gradients are those without it (GRPO, SFT and the reward model).",
    )
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="With several processes (torchrun): ddp = torch's DistributedDataParallel, every process holds "
        "the whole model; fsdp = FSDP2 (fully_shard over each decoder layer), every process holds 1/N of the "
        "weights, gradients and optimizer state between steps and gathers whole weights once a step to sample. "
        "No effect on one process.",
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
    micro_batch_tokens: int = Field(
        1024,
        gt=0,
        description="Padded tokens (examples x the longest prompt + target) per forward/backward pass: a batch's "
        "examples, sorted by length, fill passes up to it, so little is padding. The gradient is the batch's "
        "either way; lower it if memory runs short.",
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
