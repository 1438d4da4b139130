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
from thinktune.console import console, progress
from thinktune.data import Example, PromptBuilder
from thinktune.distributed import SINGLE, Ranks
from thinktune.jsonl import JsonlWriter, keep_records
from thinktune.models import load_for_inference
from thinktune.rollout import SamplingParams, make_backend
from thinktune.sft import render_target
from thinktune.tokens import decode


def pairs_path(recipe: Recipe) -> Path:
    return Path(recipe.pairs.out) if recipe.pairs.out else recipe.run.path / "pairs.jsonl"


def build_pairs(recipe: Recipe, train_set: list[Example], ranks: Ranks = SINGLE) -> Path:
    """Write (or continue) the pairs file for the training examples; return its path. Several processes answer
    their parts of each ``world × pairs.batch_size`` examples, and process 0 writes them all, in order."""
    cfg, data = recipe.pairs, recipe.data
    examples = train_set[: cfg.limit] if cfg.limit else train_set
    out = pairs_path(recipe)
    done = len(keep_records(out, lambda pair: True)) if ranks.main else 0  # a line cut short by a kill: again
    done = ranks.gather(done)[0]
    if done >= len(examples):
        console.print(f"{out}: all {len(examples)} pairs already written")
        return out
    if done:
        console.print(f"{out}: {done} pairs already written, continuing")
    model, tokenizer = load_for_inference(recipe.model.name, recipe.model.device, recipe.model.dtype)
    backend = make_backend(recipe.rollout, model, tokenizer)
    greedy = SamplingParams(cfg.max_new_tokens, greedy=True)
    prompt = PromptBuilder.from_config(tokenizer, data)
    direct = PromptBuilder(
        tokenizer, system_prompt=cfg.rejected_system_prompt, max_tokens=data.max_prompt_tokens, overlong="truncate"
    )
    writer = JsonlWriter(out) if ranks.main else None
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
        for start in range(done, len(examples), cfg.batch_size * ranks.world):
            chunk = examples[start : start + cfg.batch_size * ranks.world]
            rejected = []
            if mine := ranks.part(chunk):
                rollout = backend.generate([direct.ids(e.question) for e in mine], greedy)
                rejected = decode(tokenizer, rollout.completion_ids, rollout.completion_mask)
            rejected = [answer for part in ranks.gather(rejected) for answer in part]
            for offset, (example, answer) in enumerate(zip(chunk, rejected, strict=True) if writer else ()):
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
