"""The SFT stage: evaluate the base model, fine-tune on worked answers, save the merged model to ``sft/``, evaluate
it. The stages after it start from ``sft/``."""

from __future__ import annotations

import time

from thinktune.before_after import report_comparison
from thinktune.config import Recipe
from thinktune.console import console
from thinktune.evaluation import evaluation_key
from thinktune.models import load_for_inference, load_policy
from thinktune.rewards.scoring import recipe_scoring
from thinktune.rollout import evaluation_backend
from thinktune.run_dir import STAGE_OUTPUTS
from thinktune.sft import run_sft, save_sft_model
from thinktune.stages import Stage
from thinktune.stages.evaluations import earlier_evaluation, evaluate_and_save


def starting_from(recipe: Recipe, folder) -> Recipe:
    """The recipe with its model replaced by ``folder`` (GRPO after SFT starts from the fine-tuned model)."""
    return recipe.model_copy(update={"model": recipe.model.model_copy(update={"name": str(folder)})})


class SFTStage(Stage):
    name = "sft"
    outputs = STAGE_OUTPUTS["sft"]

    def done(self, context) -> dict | None:
        return {} if (context.run.file("sft") / "config.json").is_file() else None

    def hand_over(self, context):
        return context.with_recipe(starting_from(context.recipe, context.run.file("sft")))

    def run(self, context) -> dict:
        """With several processes they all train; process 0 alone evaluates and saves, and the others wait for
        ``sft/`` (the next stage starts from it)."""
        recipe, run, ranks = context.recipe, context.run, context.ranks
        held_out = context.splits.held_out if ranks.main else []
        model, tokenizer = load_policy(recipe.model)
        rewards, task = recipe_scoring(recipe, context.splits.task_dataset, tokenizer)
        base = earlier_evaluation(run, "base", recipe) if context.resume else None
        if recipe.eval.before and held_out and base is None:
            backend = evaluation_backend(recipe, model, tokenizer)
            base = evaluate_and_save(run, "base", backend, recipe, held_out, rewards, task)
        start = time.perf_counter()
        records = run_sft(recipe, model, tokenizer, context.splits.train, context.tracker, run, context.resume, ranks)
        seconds = time.perf_counter() - start
        if ranks.main:
            save_sft_model(model, tokenizer, run.file("sft"))
            console.print(f"saved {run.file('sft')}")
        ranks.barrier()
        if not ranks.main:
            return {}
        model, tokenizer = load_for_inference(str(run.file("sft")), recipe.model.device, recipe.model.dtype)
        summary = {"seconds": seconds}
        if records:  # this process's steps (after a resume, from the checkpoint on)
            summary.update(first_loss=records[0]["loss"], last_loss=records[-1]["loss"])
        if held_out and (recipe.eval.after or "grpo" in recipe.stages):
            backend = evaluation_backend(recipe, model, tokenizer)
            after = evaluate_and_save(run, "sft", backend, recipe, held_out, rewards, task)
            summary["after"] = after["metrics"]
            if "grpo" in recipe.stages and recipe.eval.before:
                grpo_start = evaluation_key(starting_from(recipe, run.file("sft")))
                run.write_json("eval_before.json", {**after, "made_by": grpo_start})  # GRPO starts from this model
            if base:
                summary["before"] = base["metrics"]
                summary.update(report_comparison(run, base, after, "comparison_sft.md"))
        return summary
