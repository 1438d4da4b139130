"""Preference pairs from a dataset: `thinktune pairs RECIPE.yaml`.

For each training example:
- chosen: the dataset's own reasoning and answer in the target format (``sft.completion`` filled from the
  example);
- rejected: the recipe's model answering the same question directly, with no reasoning (greedy, under
  ``pairs.rejected_system_prompt``).

The prompt stored with a pair is the one GRPO uses for that question, so a reward model trained on the pairs
scores what the ``reward_model`` reward will show it. Pairs are written as JSONL, one per line with their
provenance, a batch at a time. A rerun continues after the last pair written.
"""

from __future__ import annotations

from pathlib import Path

from thinktune.config import Recipe
from thinktune.data import PromptBuilder, load_examples
from thinktune.evaluate import decode, eos_token_ids
from thinktune.models import load_for_inference
from thinktune.rollout import generate
from thinktune.sft import render_target
from thinktune.tracking import JsonlWriter, console, progress, read_jsonl


def pairs_path(recipe: Recipe) -> Path:
    return Path(recipe.pairs.out) if recipe.pairs.out else Path(recipe.run.output_dir) / recipe.run.name / "pairs.jsonl"


def build_pairs(recipe: Recipe) -> Path:
    """Write (or continue) the pairs file; return its path."""
    cfg, data = recipe.pairs, recipe.data
    train_set, _, _ = load_examples(data)
    examples = train_set[: cfg.limit] if cfg.limit else train_set
    out = pairs_path(recipe)
    done = len(read_jsonl(out))
    if done >= len(examples):
        console.print(f"{out}: all {len(examples)} pairs already written")
        return out
    if done:
        console.print(f"{out}: {done} pairs already written, continuing")
    model, tokenizer = load_for_inference(recipe.model.name, recipe.model.device, recipe.model.dtype)
    prompt = PromptBuilder.from_config(tokenizer, data)
    direct = PromptBuilder(
        tokenizer, system_prompt=cfg.rejected_system_prompt, max_tokens=data.max_prompt_tokens, overlong="truncate"
    )
    writer = JsonlWriter(out)
    provenance = {
        "dataset": data.task if data.source == "reasoning_gym" else data.path or data.source,
        "source": data.source,
        "chosen_from": recipe.sft.completion,
        "rejected_by": {
            "model": recipe.model.name,
            "system_prompt": cfg.rejected_system_prompt,
            "greedy": True,
            "max_new_tokens": cfg.max_new_tokens,
        },
    }
    with progress("pairs", total=len(examples)) as bar:
        bar.advance(done)
        for start in range(done, len(examples), cfg.batch_size):
            chunk = examples[start : start + cfg.batch_size]
            rollout = generate(
                model,
                [direct.ids(e.question) for e in chunk],
                eos_ids=eos_token_ids(tokenizer),
                pad_id=tokenizer.pad_token_id,
                max_new_tokens=cfg.max_new_tokens,
                greedy=True,
            )
            rejected = decode(tokenizer, rollout.completion_ids, rollout.completion_mask)
            for offset, (example, answer) in enumerate(zip(chunk, rejected, strict=True)):
                writer.write(
                    {
                        "prompt": prompt.text(example.question),
                        "chosen": render_target(recipe.sft.completion, example, start + offset),
                        "rejected": answer,
                        "example_index": start + offset,
                        "reference": example.answer,
                        **provenance,
                    }
                )
            bar.advance(len(chunk))
    console.print(f"wrote {out}")
    return out
