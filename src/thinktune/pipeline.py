"""The ``train`` workflow, in one run directory: [SFT →] [pairs → reward model →] evaluate before → GRPO →
evaluate after → save."""

from __future__ import annotations

import random
import statistics
import time

import torch

from thinktune.comparison import compared, report_comparison
from thinktune.config import ConfigError, Recipe
from thinktune.console import console, peak_rss_gb
from thinktune.data import load_examples
from thinktune.distributed import SINGLE, Ranks, from_environment
from thinktune.environment import describe
from thinktune.evaluation import evaluate_recipe, evaluation_key
from thinktune.grpo.trainer import GRPOTrainer
from thinktune.jsonl import read_jsonl
from thinktune.models import load_for_inference, load_policy, pick_device, save_model
from thinktune.pairs import build_pairs
from thinktune.preference import train_reward_model
from thinktune.report import write_report
from thinktune.rollout import make_backend
from thinktune.runs import RunDir
from thinktune.scoring import recipe_scoring
from thinktune.sft import run_sft, save_sft_model
from thinktune.tracking import Tracker, Trackers, make_tracker
from thinktune.watch import EvaluationWatch, Regression


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
    device = pick_device(recipe.model.device)
    ranks = from_environment(device)
    check_distributable(recipe, ranks)
    run = RunDir(recipe, resume=resume) if ranks.main else None  # locked: one process per run folder
    ranks.barrier()  # the others attach to the directory process 0 has checked and set up
    run = run or RunDir(recipe, attach=True)
    try:
        summary = run_stages(recipe, run, resume, ranks, device)
    finally:
        run.close()
    ranks.barrier()
    return summary


def run_stages(recipe: Recipe, run: RunDir, resume: bool, ranks: Ranks, device) -> dict:
    """The recipe's stages in ``run``, then the summary and the report."""
    console.print(f"[bold]run[/] {run.path}" + (f" ({ranks.world} processes)" if ranks.world > 1 else ""))
    train_set, held_out, task_dataset = load_examples(recipe.data, recipe.eval.split)
    console.print(f"data: {len(train_set)} training, {len(held_out)} {recipe.eval.split.replace('_', '-')} examples")
    tracker = make_tracker(recipe.run.report_to, run) if ranks.main else Trackers([])
    if ranks.main:
        run.write_json("environment.json", describe(str(device), ranks.world))
    summary: dict = {}
    try:
        if "sft" in recipe.stages:
            folder = run.file("sft")
            if resume and (folder / "config.json").is_file():
                console.print(f"sft: already done, continuing from {folder}")
            else:
                summary["sft"] = sft_stage(recipe, run, tracker, resume, train_set, held_out, task_dataset)
            recipe = starting_from(recipe, folder)
        if "pairs" in recipe.stages:
            summary["pairs"] = {"path": str(build_pairs(recipe, train_set))}
        if "reward_model" in recipe.stages:
            trained = run.read_json("reward_model_summary.json") if resume else None
            if trained:
                console.print("reward model: already trained, continuing")
            summary["reward_model"] = trained or train_reward_model(recipe, run, tracker, resume)
        if "grpo" in recipe.stages:
            summary.update(grpo_stage(recipe, run, tracker, resume, train_set, held_out, task_dataset, ranks))
    finally:
        tracker.close()
    if ranks.main:
        run.write_json("summary.json", summary)
        write_report_or_warn(run)
    return summary


def check_distributable(recipe: Recipe, ranks: Ranks) -> None:
    """What several processes can run: the GRPO stage with plain prompt sampling, split evenly."""
    if ranks.world == 1:
        return
    problems = []
    if recipe.stages != ["grpo"]:
        problems.append(f"stages: {recipe.stages} (several processes run the grpo stage alone)")
    if recipe.grpo.dynamic_sampling or recipe.grpo.curriculum != "none":
        problems.append("grpo.dynamic_sampling / grpo.curriculum: not with several processes yet")
    if recipe.grpo.scale_rewards == "batch":
        problems.append("grpo.scale_rewards: batch (each process would divide by its own share's std)")
    if recipe.grpo.prompts_per_step % ranks.world:
        problems.append(f"grpo.prompts_per_step: {recipe.grpo.prompts_per_step} does not split over {ranks.world}")
    if problems:
        raise ConfigError(f"{ranks.world} processes: " + "; ".join(problems))


def write_report_or_warn(run: RunDir) -> None:
    """The run's HTML report; a report that cannot be drawn is a warning, never a failed training run."""
    try:
        console.print(f"report: {write_report(run.path)}")
    except Exception as err:  # noqa: BLE001 - the trained model and every log are already saved
        console.print(f"[yellow]report not written ({type(err).__name__}: {err}); try `thinktune report {run.path}`[/]")


def last_evaluation(run: RunDir, step: int, before: dict | None) -> tuple[int, dict] | None:
    """The newest evaluation at or before ``step`` (from its file), for the next one to be compared with."""
    curve = [r for r in read_jsonl(run.file("eval_curve.jsonl")) if 0 < r["step"] <= step]
    if curve and (evaluation := run.read_json(f"eval_{curve[-1]['label']}.json")):
        return curve[-1]["step"], evaluation
    return (0, before) if before else None


def evaluate_and_save(run: RunDir, label: str, backend, recipe: Recipe, held_out, rewards, task) -> dict:
    """Greedy held-out evaluation, printed and written to ``eval_<label>.json`` with the fingerprint of what it
    was made with (:func:`evaluation_key`); returns metrics and samples."""
    result = evaluate_recipe(backend, recipe, held_out, rewards, task, label=f"eval {label}")
    saved = {
        "split": recipe.eval.split,
        "made_by": evaluation_key(recipe),
        "metrics": result.metrics,
        "samples": result.samples,
    }
    run.write_json(f"eval_{label}.json", saved)
    console.print(f"eval {label}: " + "  ".join(f"{k} {result.metrics[k]:.3f}" for k in compared(result.metrics)))
    return saved


def earlier_evaluation(run: RunDir, label: str, recipe: Recipe) -> dict | None:
    """``eval_<label>.json`` when it was made by this recipe's model, data and evaluation settings; one made
    otherwise (another model, eval_size, reward…) is ignored, saying so, and made again."""
    saved = run.read_json(f"eval_{label}.json")
    if saved is None or saved.get("made_by") == evaluation_key(recipe):
        return saved
    console.print(
        f"[yellow]eval_{label}.json was made with another model, data or evaluation settings: evaluating again[/]"
    )
    return None


def starting_from(recipe: Recipe, folder) -> Recipe:
    """The recipe with its model replaced by ``folder`` (GRPO after SFT starts from the fine-tuned model)."""
    return recipe.model_copy(update={"model": recipe.model.model_copy(update={"name": str(folder)})})


def sft_stage(recipe: Recipe, run: RunDir, tracker: Tracker, resume: bool, train_set, held_out, task_dataset) -> dict:
    """Evaluate the base model, fine-tune on the worked answers, save the merged model to ``sft/``, evaluate it."""
    model, tokenizer = load_policy(recipe.model)
    rewards, task = recipe_scoring(recipe, task_dataset, tokenizer)
    base = earlier_evaluation(run, "base", recipe) if resume else None
    if recipe.eval.before and held_out and base is None:
        backend = make_backend(recipe.rollout, model, tokenizer)
        base = evaluate_and_save(run, "base", backend, recipe, held_out, rewards, task)
    start = time.perf_counter()
    records = run_sft(recipe, model, tokenizer, train_set, tracker, run, resume)
    seconds = time.perf_counter() - start
    save_sft_model(model, tokenizer, run.file("sft"))
    console.print(f"saved {run.file('sft')}")
    model, tokenizer = load_for_inference(str(run.file("sft")), recipe.model.device, recipe.model.dtype)
    summary = {"seconds": seconds}
    if records:  # this process's steps (after a resume, from the checkpoint on)
        summary.update(first_loss=records[0]["loss"], last_loss=records[-1]["loss"])
    if held_out and (recipe.eval.after or "grpo" in recipe.stages):
        backend = make_backend(recipe.rollout, model, tokenizer)
        after = evaluate_and_save(run, "sft", backend, recipe, held_out, rewards, task)
        summary["after"] = after["metrics"]
        if "grpo" in recipe.stages and recipe.eval.before:
            grpo_start = evaluation_key(starting_from(recipe, run.file("sft")))
            run.write_json("eval_before.json", {**after, "made_by": grpo_start})  # GRPO starts from this model
        if base:
            summary["before"] = base["metrics"]
            summary.update(report_comparison(run, base, after, "comparison_sft.md"))
    return summary


def grpo_stage(
    recipe: Recipe, run: RunDir, tracker: Tracker, resume: bool, train_set, held_out, task_dataset, ranks=SINGLE
) -> dict:
    """Evaluate before → GRPO → evaluate after → save ``final/``; resumes from the last checkpoint. With several
    processes, process 0 alone evaluates and saves."""
    trainer = GRPOTrainer.from_recipe(recipe, train_set, task_dataset, run, tracker, ranks)
    if not ranks.main:
        held_out = []  # evaluations are process 0's
    stats = trainer.prompts.stats
    if stats.skipped or stats.truncated:
        console.print(
            f"[yellow]prompts over data.max_prompt_tokens={recipe.data.max_prompt_tokens}: "
            f"{stats.skipped} skipped, {stats.truncated} truncated[/]"
        )

    watch = EvaluationWatch(recipe.eval.best_metric, run.read_json("best.json") if resume else None)
    alarms = []

    def run_eval(label: str, step: int) -> tuple[dict, Regression | None]:  # before, every N steps, after
        result = evaluate_and_save(run, label, trainer.backend, recipe, held_out, trainer.rewards, trainer.task)
        rewards = {r["step"]: r["reward"] for r in read_jsonl(run.file("metrics.jsonl"))}
        alarm = watch.check(step, result, rewards)
        if alarm:
            alarms.append(alarm.message(watch.metric))
            console.print(f"[bold yellow]regression alarm: {alarms[-1]}[/]")
        tracker.log(step, {"label": label, **result["metrics"], **(alarm.fields() if alarm else {})}, stage="eval")
        if recipe.eval.every and watch.improved(step, result):
            save_model(trainer.model, trainer.tokenizer, run.file("best"))
            run.write_json("best.json", watch.best)
        return result, alarm

    def eval_during_training(step: int) -> bool:  # True stops training (the alarm, with stop_on_regression)
        if not ranks.main:
            return False
        _, alarm = run_eval(f"step{step}", step)
        return alarm is not None and recipe.eval.stop_on_regression

    start = 0
    if resume and run.has_checkpoint():
        start = run.load_checkpoint(recipe, trainer.model, trainer.checkpoint_parts())
        console.print(f"resumed after step {start}")
    if resume:
        tracker.rewind(start if start else -1)  # what was logged after the checkpoint runs again: logged once
    before = None
    if recipe.eval.before and held_out:
        before = earlier_evaluation(run, "before", recipe)  # by the SFT stage, a sweep, or before a crash
        if before is None:
            before, _ = run_eval("before", 0)
        elif start == 0:
            tracker.log(0, {"label": "before", **before["metrics"]}, stage="eval")
    watch.previous = last_evaluation(run, start, before)

    previous = (run.read_json("summary.json") if resume else None) or {}
    began = time.perf_counter()
    records = trainer.train(start, on_eval=eval_during_training)
    seconds = time.perf_counter() - began if records else previous.get("seconds", 0.0)
    # Over every step of the run, those before a resume too (process 0's record holds them all).
    steps = (read_jsonl(run.file("metrics.jsonl")) if ranks.main else []) or records
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
    if not ranks.main:
        return {}
    save_model(trainer.model, trainer.tokenizer, run.file("final"))
    console.print(f"saved {run.file('final')}")

    summary = {
        "seconds": seconds,
        "median_step_seconds": step_seconds,
        **signal,
        "peak_rss_gb": max(peak, previous.get("peak_rss_gb") or 0.0),
        "before": before and before["metrics"],
        "training_prompts": {"used": len(trainer.pool), "skipped": stats.skipped, "truncated": stats.truncated},
    }
    if alarms:
        summary["regression_alarms"] = alarms
    if watch.best:
        summary["best"] = watch.best
    steps_done = records[-1]["step"] if records else start
    if steps_done < recipe.train.steps:
        summary["stopped_on_regression_at"] = steps_done
    if recipe.eval.after and held_out:
        after, _ = run_eval("after", steps_done)
        summary["after"] = after["metrics"]
        if before:
            summary.update(report_comparison(run, before, after))
    return summary
