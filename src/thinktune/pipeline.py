"""The ``train`` workflow: load → evaluate before → GRPO → evaluate after → save, in one run directory."""

from __future__ import annotations

import random

import torch

from thinktune.config import Recipe
from thinktune.data import load_examples
from thinktune.evaluate import evaluate_recipe, paired_sign_test, recipe_scoring, wilson_interval
from thinktune.grpo.trainer import GRPOTrainer
from thinktune.models import load_policy, save_model
from thinktune.runs import RunDir
from thinktune.tracking import comparison_markdown, comparison_table, console

COMPARED = ["accuracy", "format_accuracy", "reward", "completion_length", "truncation_rate"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def train(recipe: Recipe, resume: bool = False) -> dict:
    """Run a recipe end to end; return the before/after metrics."""
    if recipe.run.threads:
        torch.set_num_threads(recipe.run.threads)
    seed_everything(recipe.train.seed)
    run = RunDir(recipe, resume=resume)
    console.print(f"[bold]run[/] {run.path}")

    train_set, held_out, task_dataset = load_examples(recipe.data)
    console.print(f"data: {len(train_set)} training, {len(held_out)} held-out examples")
    model, tokenizer = load_policy(recipe.model)
    rewards, grader = recipe_scoring(recipe, task_dataset, tokenizer)
    trainer = GRPOTrainer(recipe, model, tokenizer, train_set, rewards, grader, run)
    stats = trainer.prompts.stats
    if stats.skipped or stats.truncated:
        console.print(
            f"[yellow]prompts over data.max_prompt_tokens={recipe.data.max_prompt_tokens}: "
            f"{stats.skipped} skipped, {stats.truncated} truncated[/]"
        )

    def run_eval(label: str):
        result = evaluate_recipe(model, tokenizer, recipe, held_out, rewards, grader, label=f"eval {label}")
        run.write_json(f"eval_{label}.json", {"metrics": result.metrics, "samples": result.samples})
        console.print(f"eval {label}: " + "  ".join(f"{k} {result.metrics[k]:.3f}" for k in COMPARED))
        return result

    start = 0
    if resume:
        start = run.load_checkpoint(model, trainer.optimizer, trainer.scheduler, trainer.generator)
        console.print(f"resumed after step {start}")
    before = None
    if recipe.eval.before and held_out:
        saved = run.read_json("eval_before.json")
        before = saved if saved else None
        if before is None:
            r = run_eval("before")
            before = {"metrics": r.metrics, "samples": r.samples}

    trainer.train(start, on_eval=lambda step: run_eval(f"step{step}"))
    run.save_checkpoint(recipe.train.steps, model, trainer.optimizer, trainer.scheduler, trainer.generator)
    save_model(model, tokenizer, run.file("final"))
    console.print(f"saved {run.file('final')}")

    summary = {
        "before": before and before["metrics"],
        "training_prompts": {"used": len(trainer.pool), "skipped": stats.skipped, "truncated": stats.truncated},
    }
    if recipe.eval.after and held_out:
        after = run_eval("after")
        summary["after"] = after.metrics
        if before:
            summary.update(report_comparison(run, before, {"metrics": after.metrics, "samples": after.samples}))
    run.write_json("summary.json", summary)
    return summary


def significance_notes(before: dict, after: dict) -> tuple[list[str], dict]:
    """One line per 0/1 metric (accuracy, format): 95% Wilson intervals and an exact paired sign test.

    Both evaluations grade the same held-out problems in the same order, so outcomes pair up per problem.
    """
    notes, tests = [], {}
    for metric, key in (("accuracy", "correct"), ("format_accuracy", "format")):
        b, a = before["metrics"][metric], after["metrics"][metric]
        n = int(after["metrics"]["n"])
        test = paired_sign_test([s[key] for s in before["samples"]], [s[key] for s in after["samples"]])
        (lo_b, hi_b), (lo_a, hi_a) = wilson_interval(b * n, n), wilson_interval(a * n, n)
        notes.append(
            f"{metric} on {n} held-out problems: {b:.3f} [95% CI {lo_b:.3f}-{hi_b:.3f}] -> {a:.3f} "
            f"[{lo_a:.3f}-{hi_a:.3f}]; paired sign test: {test['fixed']} fixed, {test['broken']} broken, "
            f"p = {test['p_value']:.2g}"
        )
        tests[metric] = test
    return notes, tests


def report_comparison(run: RunDir, before: dict, after: dict) -> dict:
    """Print and save the before/after table with confidence intervals and sign tests."""
    b, a = before["metrics"], after["metrics"]
    console.print(comparison_table(b, a, COMPARED))
    notes, tests = significance_notes(before, after)
    for note in notes:
        console.print(note)
    run.file("comparison.md").write_text(comparison_markdown(b, a, COMPARED) + "\n" + "\n\n".join(notes) + "\n")
    return {"sign_tests": tests, "notes": notes}
