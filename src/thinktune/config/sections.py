"""The recipe's model, data and reward sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from thinktune.config.base import EVALUATED, _expanded, _Section, tagged


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
        json_schema_extra=tagged(EVALUATED),
    )
    finetune: Literal["lora", "full"] = Field("lora", description="Train LoRA adapters or every weight.")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="'auto' picks CUDA, then Apple MPS, then CPU."
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Weights and compute precision. bf16 pays on GPUs; fp32 is the safe CPU default.",
        json_schema_extra=tagged(EVALUATED),
    )
    quantize: Literal["none", "nf4"] = Field(
        "none",
        description="nf4 = hold the frozen base in 4-bit NormalFloat with LoRA on top (QLoRA; bitsandbytes, on CPUs "
        "and CUDA: pip install 'thinktune[savers]'): linear weights at about 0.56 bytes each, not 2 or 4. Needs "
        "model.finetune=lora; the adapter it saves loads on the unquantized base.",
        json_schema_extra=tagged(EVALUATED),
    )

    _expand_name = field_validator("name")(_expanded)

    @model_validator(mode="after")
    def _quantized_base_trains_adapters(self) -> ModelConfig:
        if self.quantize != "none" and self.finetune != "lora":
            raise ValueError(f"quantize: {self.quantize} holds the base frozen in 4 bits: needs finetune: lora")
        return self


class FewShot(_Section):
    question: str = Field(description="An example question.")
    response: str = Field(description="The ideal response to it, in the answer format.")


class DataConfig(_Section):
    section_tags = (EVALUATED,)

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
