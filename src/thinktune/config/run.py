"""The evaluation and run sections: what is measured, and where a run's files go."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from thinktune.config.base import EVALUATED, MAX_RUN_NAME, RESUME_SAFE, _expanded, _Section, tagged


class EvalConfig(_Section):
    before: bool = Field(
        True, description="Evaluate the starting model before training.", json_schema_extra=tagged(RESUME_SAFE)
    )
    after: bool = Field(
        True, description="Evaluate the trained model after training.", json_schema_extra=tagged(RESUME_SAFE)
    )
    every: int = Field(
        0, ge=0, description="Also evaluate every N steps; 0 = off.", json_schema_extra=tagged(RESUME_SAFE)
    )
    split: Literal["held_out", "validation"] = Field(
        "held_out",
        description="What evaluations grade: the held-out set (the final, once-only measure) or the validation "
        "set (data.validation_size) for choosing settings.",
        json_schema_extra=tagged(EVALUATED),
    )
    samples: int = Field(
        0,
        ge=0,
        description="Also draw k completions per problem at grpo.temperature and report mean@k, pass@j, maj@k "
        "and the share of problems all wrong / all right in k samples; 0 = greedy only.",
        json_schema_extra=tagged(EVALUATED),
    )
    seed: int = Field(
        0,
        description="Seed of the sampled evaluation (the same for before and after).",
        json_schema_extra=tagged(EVALUATED),
    )
    max_new_tokens: int | None = Field(
        None, gt=0, description="Completion budget; None = grpo.max_new_tokens.", json_schema_extra=tagged(EVALUATED)
    )
    batch_size: int = Field(
        32, gt=0, description="Prompts per greedy generation batch.", json_schema_extra=tagged(EVALUATED, RESUME_SAFE)
    )
    dtype: Literal["rollout", "model"] = Field(
        "rollout",
        description="What the native sampler computes evaluations in: rollout = as rollout.dtype samples in "
        "training; model = the policy's own dtype, the model as it is saved, whatever rollout.dtype is (a "
        "bfloat16 sampler grades a float32 model somewhat differently).",
        json_schema_extra=tagged(EVALUATED),
    )
    best_metric: Literal["accuracy", "format_accuracy", "reward"] = Field(
        "accuracy",
        description="With eval.every: the trained model scoring best on it so far is kept in best/ (best.json says "
        "when); its fall between two evaluations (paired sign test, p < 0.05) while the training reward rises "
        "raises the regression alarm.",
        json_schema_extra=tagged(RESUME_SAFE),
    )
    worker: bool = Field(
        False,
        description="Make the eval.every evaluations in a process of their own on eval.device, from a snapshot of "
        "each due step: training goes on meanwhile, and eval_curve.jsonl, best/ and the regression alarm follow as "
        "results arrive (the alarm stops training at the first step after it arrives). Its rewards must be "
        "importable (a name or pkg.module:function).",
        json_schema_extra=tagged(RESUME_SAFE),
    )
    device: str | None = Field(
        None,
        description="The evaluation worker's device (cpu, cuda:1, ...); None = model.device.",
        json_schema_extra=tagged(RESUME_SAFE),
    )
    worker_threads: int | None = Field(
        None,
        gt=0,
        description="torch CPU threads of the evaluation worker; None = run.threads. On a CPU that also trains, "
        "split the cores (say run.threads=3, eval.worker_threads=1 on 4): threads beyond the cores slow both.",
        json_schema_extra=tagged(RESUME_SAFE),
    )
    stop_on_regression: bool = Field(
        False,
        description="Stop GRPO at the regression alarm (then save final/ and evaluate as usual).",
        json_schema_extra=tagged(RESUME_SAFE),
    )


class RunConfig(_Section):
    section_tags = (RESUME_SAFE,)

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
    plan: bool | Literal["auto"] = Field(
        "auto",
        description="Before step 1 of a new run, measure one worst-case GRPO step in a separate process (thinktune "
        "plan) and stop if it does not fit run.memory_budget_gb, naming what to change. auto: measure when "
        "run.memory_budget_gb is set or thinktune memory's estimate is over half the device's free memory; "
        "true: always; false: never.",
    )
    memory_budget_gb: float | None = Field(
        None,
        gt=0,
        description="Memory the run may use, in GB (CPU: resident memory; CUDA: the allocator's reserved memory); "
        "None = 90% of what the device has free. Set, the plan also picks the largest grpo.micro_batch_size that fits.",
    )
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
