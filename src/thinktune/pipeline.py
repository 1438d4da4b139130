"""The ``train`` workflow, in one run directory: [SFT →] [pairs → reward model →] evaluate before → GRPO →
evaluate after → save."""

from __future__ import annotations

import random
import statistics
import time

import torch

from thinktune.config import Recipe
from thinktune.data import load_examples
from thinktune.evaluate import evaluate_recipe, recipe_scoring
from thinktune.grpo.trainer import GRPOTrainer
from thinktune.models import load_for_inference, load_policy, save_model
from thinktune.pairs import build_pairs
from thinktune.preference import train_reward_model
from thinktune.runs import RunDir
from thinktune.sft import run_sft, save_sft_model
from thinktune.stats import paired_sign_test, wilson_interval
from thinktune.tracking import JsonlWriter, comparison_markdown, comparison_table, console, peak_rss_gb

COMPARED = ["accuracy", "format_accuracy", "reward", "completion_length", "truncation_rate"]


def compared(metrics: dict) -> list[str]:
    """The metrics a before/after table shows: the fixed ones present, the sampled ones (pass@k …), then each
    reward function's mean."""
    sampled = [key for key in metrics if "@" in key]
    return [key for key in COMPARED if key in metrics] + sampled + sorted(k for k in metrics if k.startswith("reward/"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def train(recipe: Recipe, resume: bool = False) -> dict:
    """Run a recipe's stages (``sft``, ``pairs``, ``reward_model``, ``grpo``) in order, in one run directory.

    With ``resume``, finished stages are skipped (pairs continue after the last line written, GRPO from its
    last checkpoint). Returns the summary, also written to ``summary.json``.
    """
    if recipe.run.threads:
        torch.set_num_threads(recipe.run.threads)
    seed_everything(recipe.train.seed)
    run = RunDir(recipe, resume=resume)
    console.print(f"[bold]run[/] {run.path}")
    train_set, held_out, task_dataset = load_examples(recipe.data, recipe.eval.split)
    console.print(f"data: {len(train_set)} training, {len(held_out)} {recipe.eval.split.replace('_', '-')} examples")
    summary: dict = {}
    if "sft" in recipe.stages:
        folder = run.file("sft")
        if resume and (folder / "config.json").is_file():
            console.print(f"sft: already done, continuing from {folder}")
        else:
            summary["sft"] = sft_stage(recipe, run, train_set, held_out, task_dataset)
        recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"name": str(folder)})})
    if "pairs" in recipe.stages:
        summary["pairs"] = {"path": str(build_pairs(recipe))}
    if "reward_model" in recipe.stages:
        trained = run.read_json("reward_model_summary.json") if resume else None
        if trained:
            console.print("reward model: already trained, continuing")
        summary["reward_model"] = trained or train_reward_model(recipe, run)
    if "grpo" in recipe.stages:
        summary.update(grpo_stage(recipe, run, resume, train_set, held_out, task_dataset))
    run.write_json("summary.json", summary)
    return summary


def evaluate_and_save(run: RunDir, label: str, model, tokenizer, recipe: Recipe, held_out, rewards, grader) -> dict:
    """Greedy held-out evaluation, printed and written to ``eval_<label>.json``; returns metrics and samples."""
    result = evaluate_recipe(model, tokenizer, recipe, held_out, rewards, grader, label=f"eval {label}")
    saved = {"split": recipe.eval.split, "metrics": result.metrics, "samples": result.samples}
    run.write_json(f"eval_{label}.json", saved)
    console.print(f"eval {label}: " + "  ".join(f"{k} {result.metrics[k]:.3f}" for k in compared(result.metrics)))
    return saved


def sft_stage(recipe: Recipe, run: RunDir, train_set, held_out, task_dataset) -> dict:
    """Evaluate the base model, fine-tune on the worked answers, save the merged model to ``sft/``, evaluate it."""
    model, tokenizer = load_policy(recipe.model)
    rewards, grader = recipe_scoring(recipe, task_dataset, tokenizer)
    base = None
    if recipe.eval.before and held_out:
        base = evaluate_and_save(run, "base", model, tokenizer, recipe, held_out, rewards, grader)
    start = time.perf_counter()
    records = run_sft(recipe, model, tokenizer, train_set, run)
    seconds = time.perf_counter() - start
    save_sft_model(model, tokenizer, run.file("sft"))
    console.print(f"saved {run.file('sft')}")
    model, tokenizer = load_for_inference(str(run.file("sft")), recipe.model.device, recipe.model.dtype)
    summary = {"seconds": seconds, "first_loss": records[0]["loss"], "last_loss": records[-1]["loss"]}
    if held_out and (recipe.eval.after or "grpo" in recipe.stages):
        after = evaluate_and_save(run, "sft", model, tokenizer, recipe, held_out, rewards, grader)
        summary["after"] = after["metrics"]
        if "grpo" in recipe.stages and recipe.eval.before:
            run.write_json("eval_before.json", after)  # GRPO starts from this very model
        if base:
            summary["before"] = base["metrics"]
            summary.update(report_comparison(run, base, after, "comparison_sft.md"))
    return summary


def grpo_stage(recipe: Recipe, run: RunDir, resume: bool, train_set, held_out, task_dataset) -> dict:
    """Evaluate before → GRPO → evaluate after → save ``final/``; resumes from the last checkpoint."""
    model, tokenizer = load_policy(recipe.model)
    rewards, grader = recipe_scoring(recipe, task_dataset, tokenizer)
    trainer = GRPOTrainer(recipe, model, tokenizer, train_set, rewards, grader, run)
    stats = trainer.prompts.stats
    if stats.skipped or stats.truncated:
        console.print(
            f"[yellow]prompts over data.max_prompt_tokens={recipe.data.max_prompt_tokens}: "
            f"{stats.skipped} skipped, {stats.truncated} truncated[/]"
        )

    curve = JsonlWriter(run.file("eval_curve.jsonl"))  # held-out metrics by GRPO step: before, every N, after

    def run_eval(label: str, step: int) -> dict:
        result = evaluate_and_save(run, label, model, tokenizer, recipe, held_out, rewards, grader)
        curve.write({"step": step, "label": label, **result["metrics"]})
        return result

    start = 0
    if resume and (run.checkpoint / "state.pt").is_file():
        start = run.load_checkpoint(model, trainer.optimizer, trainer.scheduler, trainer.generator, trainer.sampler)
        console.print(f"resumed after step {start}")
    before = None
    if recipe.eval.before and held_out:
        before = run.read_json("eval_before.json")
        if before is None:
            before = run_eval("before", 0)
        elif not curve.path.is_file():  # the SFT stage evaluated the model GRPO starts from
            curve.write({"step": 0, "label": "before", **before["metrics"]})

    began = time.perf_counter()
    records = trainer.train(start, on_eval=lambda step: run_eval(f"step{step}", step))
    seconds = time.perf_counter() - began
    step_seconds, signal, peak = None, {}, peak_rss_gb()
    if records:  # none when resuming a finished run
        step_seconds = statistics.median(
            r["seconds_rollout"] + r["seconds_score"] + r["seconds_update"] for r in records
        )
        signal = {  # how much of the sampling carried a gradient, over the steps of this process
            "flat_group_rate": statistics.fmean(r["zero_std_groups"] for r in records),
            "prompts_drawn_per_step": statistics.fmean(r["sampled_prompts"] for r in records),
        }
        console.print(
            f"grpo: {len(records)} steps in {seconds:.0f} s (eval.every evaluations included), "
            f"median step {step_seconds:.1f} s; {signal['prompts_drawn_per_step']:.1f} prompts drawn a step, "
            f"{signal['flat_group_rate']:.0%} of their groups flat; peak memory so far {peak:.1f} GB"
        )
    run.save_checkpoint(
        recipe.train.steps, model, trainer.optimizer, trainer.scheduler, trainer.generator, trainer.sampler
    )
    save_model(model, tokenizer, run.file("final"))
    console.print(f"saved {run.file('final')}")

    summary = {
        "seconds": seconds,
        "median_step_seconds": step_seconds,
        **signal,
        "peak_rss_gb": peak,
        "before": before and before["metrics"],
        "training_prompts": {"used": len(trainer.pool), "skipped": stats.skipped, "truncated": stats.truncated},
    }
    if recipe.eval.after and held_out:
        after = run_eval("after", recipe.train.steps)
        summary["after"] = after["metrics"]
        if before:
            summary.update(report_comparison(run, before, after))
    return summary


def split_name(evaluation: dict) -> str:
    """'held-out' or 'validation': what an evaluation graded (files written before splits existed: held-out)."""
    return evaluation.get("split", "held_out").replace("_", "-")


def significance_notes(before: dict, after: dict) -> tuple[list[str], dict]:
    """One line per 0/1 metric (accuracy, format): 95% Wilson intervals and an exact paired sign test.

    Both evaluations grade the same problems (held-out or validation) in the same order, so outcomes pair up.
    """
    notes, tests = [], {}
    split = split_name(after)
    for metric, key in (("accuracy", "correct"), ("format_accuracy", "format")):
        if metric not in after["metrics"]:
            continue  # no reference answers to be accurate against
        b, a = before["metrics"][metric], after["metrics"][metric]
        n = int(after["metrics"]["n"])
        test = paired_sign_test([s[key] for s in before["samples"]], [s[key] for s in after["samples"]])
        (lo_b, hi_b), (lo_a, hi_a) = wilson_interval(b * n, n), wilson_interval(a * n, n)
        notes.append(
            f"{metric} on {n} {split} problems: {b:.3f} [95% CI {lo_b:.3f}-{hi_b:.3f}] -> {a:.3f} "
            f"[{lo_a:.3f}-{hi_a:.3f}]; paired sign test: {test['fixed']} fixed, {test['broken']} broken, "
            f"p = {test['p_value']:.2g}"
        )
        tests[metric] = test
    counts = next((k for k in after["samples"][0] if k.startswith("correct_of_")), None) if after["samples"] else None
    if counts and all(counts in s for s in before["samples"]):
        k = int(counts.removeprefix("correct_of_"))
        test = paired_sign_test([s[counts] for s in before["samples"]], [s[counts] for s in after["samples"]])
        notes.append(
            f"mean@{k} on the same problems: {test['fixed']} got more of their {k} samples right, "
            f"{test['broken']} fewer; paired sign test p = {test['p_value']:.2g}"
        )
        tests[f"mean@{k}"] = test
    return notes, tests


def report_comparison(run: RunDir, before: dict, after: dict, name: str = "comparison.md") -> dict:
    """Print and save the before/after table with confidence intervals and sign tests."""
    b, a = before["metrics"], after["metrics"]
    console.print(comparison_table(b, a, compared(a), f"{split_name(after)} evaluation"))
    notes, tests = significance_notes(before, after)
    for note in notes:
        console.print(note)
    run.file(name).write_text(comparison_markdown(b, a, compared(a)) + "\n" + "\n\n".join(notes) + "\n")
    return {"sign_tests": tests, "notes": notes}
