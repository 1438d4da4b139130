"""The ``train`` workflow, in one run directory: [SFT →] [pairs → reward model →] evaluate before → GRPO →
evaluate after → save (the stages: :mod:`thinktune.stages`); with several processes, what they can run."""

from __future__ import annotations

import random

import torch

from thinktune.config import ConfigError, Recipe
from thinktune.console import console
from thinktune.data import load_examples
from thinktune.distributed import Ranks, from_environment
from thinktune.environment import describe
from thinktune.models import pick_device
from thinktune.parallel import check_engine
from thinktune.plan import before_training, planned
from thinktune.report import write_report
from thinktune.run_dir import RunDir
from thinktune.stages import Splits, StageContext, run_in_order
from thinktune.tracking import Trackers, make_tracker


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
    if resume:
        recipe = planned(recipe)
    run = RunDir(recipe, resume=resume) if ranks.main else None  # locked: one process per run folder
    if run and not resume:
        recipe = plan_first(recipe, run, ranks, device)
    ranks.barrier()  # the others attach to the directory process 0 has checked and set up
    run = run or RunDir(recipe, attach=True)
    try:
        summary = run_stages(recipe, run, resume, ranks, device)
    finally:
        run.close()
    ranks.barrier()
    return summary


def run_stages(recipe: Recipe, run: RunDir, resume: bool, ranks: Ranks, device) -> dict:
    """The recipe's stages in ``run`` (:mod:`thinktune.stages`), then the summary and the report."""
    console.print(f"[bold]run[/] {run.path}" + (f" ({ranks.world} processes)" if ranks.world > 1 else ""))
    train_set, held_out, task_dataset = load_examples(recipe.data, recipe.eval.split)
    console.print(f"data: {len(train_set)} training, {len(held_out)} {recipe.eval.split.replace('_', '-')} examples")
    tracker = make_tracker(recipe.run.report_to, run) if ranks.main else Trackers([])
    if ranks.main:
        run.write_json("environment.json", describe(str(device), ranks.world))
    try:
        context = StageContext(recipe, run, tracker, resume, Splits(train_set, held_out, task_dataset), ranks)
        summary = run_in_order(context)
    finally:
        tracker.close()
    if ranks.main:
        run.write_json("summary.json", summary)
        write_report_or_warn(run)
    return summary


def plan_first(recipe: Recipe, run: RunDir, ranks: Ranks, device) -> Recipe:
    """The worst-case step measured before step 1 (``run.plan``, :mod:`thinktune.plan`): the recipe to train, with
    the plan's micro-batch size under ``run.memory_budget_gb``; a step that cannot fit stops the run here, with
    nothing in the folder but ``recipe.yaml``."""
    if ranks.world > 1:
        if recipe.run.plan is True or recipe.run.memory_budget_gb:
            console.print("plan: not measured with several processes (run thinktune plan on one)")
        return recipe
    planned_recipe, plan = before_training(recipe, str(device))
    if plan is not None:
        run.write_json("plan.json", plan.record(planned_recipe))
        run.write_recipe(planned_recipe)
    return planned_recipe


def check_distributable(recipe: Recipe, ranks: Ranks) -> None:
    """What several processes can run: every stage, each batch split evenly; fsdp for GRPO alone."""
    if ranks.world == 1:
        return
    problems = []
    for stage in {"sft", "reward_model"} & {*recipe.stages}:
        size = getattr(recipe, stage).batch_size
        if size % ranks.world:
            problems.append(f"{stage}.batch_size: {size} does not split over {ranks.world}")
        if recipe.train.distributed == "fsdp":
            problems.append(f"stages: {stage} trains on ddp only (set train.distributed: ddp, or run it apart)")
    if recipe.grpo.prompts_per_step % ranks.world:
        problems.append(f"grpo.prompts_per_step: {recipe.grpo.prompts_per_step} does not split over {ranks.world}")
    problems += check_engine(recipe)
    if problems:
        raise ConfigError(f"{ranks.world} processes: " + "; ".join(problems))


def write_report_or_warn(run: RunDir) -> None:
    """The run's HTML report; a report that cannot be drawn is a warning, never a failed training run."""
    try:
        console.print(f"report: {write_report(run.path)}")
    except Exception as err:  # noqa: BLE001 - the trained model and every log are already saved
        console.print(f"[yellow]report not written ({type(err).__name__}: {err}); try `thinktune report {run.path}`[/]")
