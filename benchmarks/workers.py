"""One benchmark run in its own process: thinktune, TRL's GRPOTrainer, or a bare generation comparison.

Each worker writes a JSON result: per-step seconds and token counts, peak RSS, matmul parameter count.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import torch
from workload import (
    GROUP,
    LEARNING_RATE,
    MAX_NEW_TOKENS,
    PROMPTS_PER_STEP,
    TEMPERATURE,
    build_trainer,
    case_of,
    model_path,
    parameter_count,
    recipe,
)

from thinktune.training import autocast_mode


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_thinktune(
    case_name: str,
    scratch: Path,
    sampler: str = "model",
    fixed: bool = False,
    extra: tuple[str, ...] = (),
    steps: int = 0,
) -> dict:
    """The real trainer on the case, its sampler computing as ``rollout.dtype: sampler`` says (with ``fixed``, every
    completion running to the budget; ``extra``: more recipe overrides); also writes the prompts it drew, so TRL
    gets the very same ones; ``steps``: the case's own number of steps unless given."""
    case = case_of(case_name, steps)
    overrides = (f"rollout.dtype={sampler}", f"grpo.ignore_eos={str(fixed).lower()}", *extra)
    trainer = build_trainer(case, scratch, scratch / f"runs-{time.time_ns()}", overrides)
    model = trainer.model
    records, prompts = [], []  # a record per step
    for step in range(case.steps):
        start = time.perf_counter()
        record = trainer.step(step)
        seconds = time.perf_counter() - start
        batch = trainer.last_drawn
        prompts.append(
            [{"text": t, "columns": json.dumps(e.columns())} for t, e in zip(batch.texts, batch.examples, strict=True)]
        )
        prompt_tokens = sum(len(trainer.pool[i][1]) for i in batch.indices)
        records.append(
            {
                "seconds": seconds,
                "seconds_rollout": record["seconds_rollout"],
                "seconds_update": record["seconds_update"],
                "completions": batch.size * GROUP,
                "generated_tokens": record["completion_length"] * batch.size * GROUP,
                "unique_prompt_tokens": prompt_tokens,
                "trained_tokens": prompt_tokens * GROUP + record["completion_length"] * batch.size * GROUP,
                "rows_with_signal": 1 - record["zero_std_groups"],
                "reward": record["reward"],
            }
        )
    (scratch / f"prompts-{case_name}.json").write_text(json.dumps(prompts))
    dtype = (
        "float32"
        if trainer.backend.dtype is None
        else f"float32, {str(trainer.backend.dtype).removeprefix('torch.')} sampler"
    )
    if autocast_mode(trainer.recipe.train.autocast, next(model.parameters()).device) == "bf16":
        dtype += ", bfloat16 update matmuls"
    return {"steps": records, "peak_rss_mb": peak_rss_mb(), "params": parameter_count(model), "dtype": dtype}


def run_trl(
    case_name: str, scratch: Path, dtype: str, fixed: bool = False, checkpointing: bool = False, steps: int = 0
) -> dict:
    """TRL's GRPOTrainer on the same model, prompts (as rendered chat text) and reward; with ``fixed``, every
    completion held to the budget by ``min_new_tokens``; ``checkpointing``: its gradient checkpointing on; ``steps`` as
    thinktune's run had them."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from thinktune.data import load_examples
    from thinktune.models import load_tokenizer
    from thinktune.rewards.scoring import recipe_scoring

    case = case_of(case_name, steps)
    path = model_path(case, scratch)
    r = recipe(case, path, scratch / "unused")
    _, _, task_dataset = load_examples(r.data)
    rewards, _ = recipe_scoring(r, task_dataset)
    steps_prompts = json.loads((scratch / f"prompts-{case_name}.json").read_text())
    rows = [{"prompt": p["text"], "columns": p["columns"]} for step in steps_prompts for p in step]

    def reward(prompts, completions, columns, **_):
        return rewards.score(prompts, completions, [json.loads(c) for c in columns]).total.tolist()

    reward.__name__ = "format_and_task_score"
    timings, history = [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            timings.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            timings[-1] = time.perf_counter() - timings[-1]

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                history.append(dict(logs))

    config = GRPOConfig(
        output_dir=str(scratch / f"trl-{time.time_ns()}"),
        per_device_train_batch_size=GROUP,
        gradient_accumulation_steps=PROMPTS_PER_STEP,  # one optimizer step per 4 prompts x 8 completions
        num_generations=GROUP,
        max_completion_length=MAX_NEW_TOKENS,
        temperature=TEMPERATURE,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        beta=0.0,
        max_steps=case.steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=dtype == "bfloat16",
        shuffle_dataset=False,
        seed=0,
        disable_tqdm=True,
        model_init_kwargs={"dtype": torch.float32},
        # GRPOConfig turns it on unless told (TRL 1.16): every TRL row of make bench ran with it until 2026-12-06;
        # off, each layer's forward is not run twice, TRL's fastest
        gradient_checkpointing=checkpointing,
        generation_kwargs={"min_new_tokens": MAX_NEW_TOKENS} if fixed else None,
    )
    tokenizer = load_tokenizer(path)
    peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(
        model=path,
        reward_funcs=reward,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config if case.finetune == "lora" else None,
        callbacks=[Timer()],
    )
    trainer.train()
    records = []  # a record per step
    for seconds, log, prompts in zip(timings, history, steps_prompts, strict=False):
        generated = log["completions/mean_length"] * len(prompts) * GROUP
        prompt_tokens = sum(len(tokenizer(p["text"], add_special_tokens=False)["input_ids"]) for p in prompts)
        records.append(
            {
                "seconds": seconds,
                "completions": len(prompts) * GROUP,
                "generated_tokens": generated,
                "unique_prompt_tokens": prompt_tokens,
                "trained_tokens": prompt_tokens * GROUP + generated,
                "rows_with_signal": 1 - log["frac_reward_zero_std"],
                "reward": log.get("reward"),
            }
        )
    return {"steps": records, "peak_rss_mb": peak_rss_mb(), "params": parameter_count(trainer.model), "dtype": dtype}


def run_generate(system: str, scratch: Path) -> dict:
    """Sampling only, LoRA SmolLM2, 4 prompts x 8 samples x up to 128 tokens: thinktune's engine or HF generate."""
    from thinktune.config import ModelConfig
    from thinktune.modeling import left_pad
    from thinktune.models import load_policy
    from thinktune.rollout import generate
    from thinktune.tokens import eos_token_ids

    model, tokenizer = load_policy(ModelConfig(name="smollm2-135m-instruct", finetune="lora"))
    model.eval()
    steps_prompts = json.loads((scratch / "prompts-smollm2-lora.json").read_text())
    eos = eos_token_ids(tokenizer)
    steps = []
    for i, prompts in enumerate(steps_prompts):
        ids = [tokenizer(p["text"], add_special_tokens=False)["input_ids"] for p in prompts]
        generator = torch.Generator().manual_seed(i)
        start = time.perf_counter()
        if system == "thinktune":
            out = generate(
                model,
                ids,
                eos_ids=eos,
                pad_id=tokenizer.pad_token_id,
                max_new_tokens=MAX_NEW_TOKENS,
                group_size=GROUP,
                temperature=TEMPERATURE,
                generator=generator,
            )
            generated = out.completion_mask.sum().item()
        else:
            torch.manual_seed(i)
            padded, mask = left_pad(ids, tokenizer.pad_token_id)
            with torch.no_grad():
                out = model.generate(
                    input_ids=padded,
                    attention_mask=mask,
                    max_new_tokens=MAX_NEW_TOKENS,
                    do_sample=True,
                    temperature=TEMPERATURE,
                    top_k=0,
                    top_p=1.0,
                    num_return_sequences=GROUP,
                    eos_token_id=eos,
                    pad_token_id=tokenizer.pad_token_id,
                )
            completion = out[:, padded.shape[1] :]
            is_eos = torch.isin(completion, torch.tensor(eos))
            generated = ((is_eos.cumsum(-1) - is_eos.long()) == 0).sum().item()
        seconds = time.perf_counter() - start
        steps.append(
            {
                "seconds": seconds,
                "completions": len(ids) * GROUP,
                "generated_tokens": generated,
                "unique_prompt_tokens": sum(len(x) for x in ids),
                "trained_tokens": 0,
            }
        )
    return {"steps": steps, "peak_rss_mb": peak_rss_mb(), "params": parameter_count(model), "dtype": "float32"}
