"""The GRPO stage: evaluate before → GRPO → evaluate after → save ``final/``; resumes from the last checkpoint.
With several processes every process generates its part of each evaluation, and process 0 records it and
saves."""

from __future__ import annotations

import statistics
import time

from thinktune.before_after import report_comparison
from thinktune.console import console, peak_rss_gb
from thinktune.grpo.trainer import GRPOTrainer
from thinktune.jsonl import read_jsonl
from thinktune.models import save_model
from thinktune.run_dir import STAGE_OUTPUTS
from thinktune.stages import Stage
from thinktune.stages.evaluations import TrainingEvaluations


class GRPOStage(Stage):
    """Never done in advance: a resume continues from the last checkpoint, or goes on to the evaluation after."""

    name = "grpo"
    outputs = STAGE_OUTPUTS["grpo"]

    def run(self, context) -> dict:
        recipe, run, tracker, splits = context.recipe, context.run, context.tracker, context.splits
        trainer = GRPOTrainer.from_recipe(recipe, splits.train, splits.task_dataset, run, tracker, context.ranks)
        stats = trainer.prompts.stats
        if stats.skipped or stats.truncated:
            console.print(
                f"[yellow]prompts over data.max_prompt_tokens={recipe.data.max_prompt_tokens}: "
                f"{stats.skipped} skipped, {stats.truncated} truncated[/]"
            )
        evaluations = TrainingEvaluations(context, trainer)
        start = 0
        if context.resume and run.has_checkpoint():
            start = run.load_checkpoint(recipe, trainer.model, trainer.checkpoint_parts())
            console.print(f"resumed after step {start}")
        if context.resume:
            tracker.rewind(start if start else -1)  # what was logged after the checkpoint runs again: logged once
        trainer.engine.gather()  # fsdp: whole weights to evaluate
        before = evaluations.before(start)
        previous = (run.read_json("summary.json") if context.resume else None) or {}
        began = time.perf_counter()
        try:
            records = trainer.train(start, evaluations)
            evaluations.finish()  # the worker's last results
        finally:
            evaluations.close(finished=False)  # an interrupted run leaves its snapshots for --resume
        seconds = time.perf_counter() - began if records else previous.get("seconds", 0.0)
        summary = grpo_summary(context, records, seconds, previous)
        trainer.engine.gather()  # fsdp: whole weights to save and evaluate
        if context.ranks.main:
            save_model(trainer.model, trainer.tokenizer, run.file("final"), trainer.engine.whole_state_dict())
            console.print(f"saved {run.file('final')}")
        steps_done = records[-1]["step"] if records else start
        after = None
        if recipe.eval.after and evaluations.held_out:  # every process generates its part
            after, _ = evaluations.evaluate("after", steps_done)
        if not context.ranks.main:
            return {}
        stats = trainer.prompts.stats
        summary["before"] = before and before["metrics"]
        summary["training_prompts"] = {
            "used": len(trainer.pool),
            "skipped": stats.skipped,
            "truncated": stats.truncated,
        }
        if evaluations.alarms:
            summary["regression_alarms"] = evaluations.alarms
        if evaluations.watch.best:
            summary["best"] = evaluations.watch.best
        if steps_done < recipe.train.steps:
            summary["stopped_on_regression_at"] = steps_done
        if after:
            summary["after"] = after["metrics"]
            if before:
                summary.update(report_comparison(run, before, after))
        return summary


def grpo_summary(context, records: list[dict], seconds: float, previous: dict) -> dict:
    """Time, the share of sampling that carried a gradient and memory, over every step of the run (those before a
    resume too: process 0's metrics.jsonl holds them all); printed, and returned for the summary."""
    main = context.ranks.main
    steps = (read_jsonl(context.run.file("metrics.jsonl")) if main else []) or records
    step_seconds, signal, peak = None, {}, peak_rss_gb()
    if steps:
        step_seconds = statistics.median(r["seconds_rollout"] + r["seconds_score"] + r["seconds_update"] for r in steps)
        signal = {  # how much of the sampling carried a gradient
            "flat_group_rate": statistics.fmean(r["zero_std_groups"] for r in steps),
            "prompts_drawn_per_step": statistics.fmean(r["sampled_prompts"] for r in steps),
        }
    if records:
        console.print(
            f"grpo: {len(records)} steps in {seconds:.0f} s (eval.every evaluations included), "
            f"median step {step_seconds:.1f} s; {signal['prompts_drawn_per_step']:.1f} prompts drawn a step, "
            f"{signal['flat_group_rate']:.0%} of their groups flat; peak memory so far {peak:.1f} GB"
        )
    return {
        "seconds": seconds,
        "median_step_seconds": step_seconds,
        **signal,
        "peak_rss_gb": max(peak, previous.get("peak_rss_gb") or 0.0),
    }
