"""The stages of a run, as objects: ``sft``, ``pairs``, ``reward_model`` and ``grpo``.

Each stage has a ``name``, the ``outputs`` it leaves in the run folder, ``done(context)`` (on a resume: the summary
of the finished stage, or None when it must run, or continue, again) and ``run(context)`` (its summary part).
``hand_over(context)`` gives the next stages their context: after SFT they start from the fine-tuned model.
``pipeline.train`` runs the recipe's stages in order through :func:`run_in_order`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from thinktune.config import Recipe
from thinktune.console import console
from thinktune.distributed import Ranks
from thinktune.run_dir import RunDir
from thinktune.tracking import Tracker


@dataclass(frozen=True)
class Splits:
    """The examples a run trains and evaluates on, and the reasoning-gym scorer (or None)."""

    train: list
    held_out: list
    task_dataset: object = None


@dataclass(frozen=True)
class StageContext:
    """What every stage runs with."""

    recipe: Recipe
    run: RunDir
    tracker: Tracker
    resume: bool
    splits: Splits
    ranks: Ranks

    def with_recipe(self, recipe: Recipe) -> StageContext:
        return replace(self, recipe=recipe)


class Stage:
    """A stage of a run; subclasses set ``name`` and ``outputs`` and define ``run``."""

    name: str
    outputs: tuple[str, ...]  # what it leaves in the run folder (run_dir.STAGE_OUTPUTS)

    def done(self, context: StageContext) -> dict | None:
        """On a resume: the finished stage's summary, or None when it must run (or continue itself)."""
        return None

    def run(self, context: StageContext) -> dict:
        """Run the stage; its part of the run's summary."""
        raise NotImplementedError

    def hand_over(self, context: StageContext) -> StageContext:
        """The context of the stages after this one: the same, unless the stage changes what they start from."""
        return context


def stages_of(recipe: Recipe) -> list[Stage]:
    from thinktune.stages.grpo import GRPOStage
    from thinktune.stages.preference import PairsStage, RewardModelStage
    from thinktune.stages.sft import SFTStage

    known = {s.name: s for s in (SFTStage(), PairsStage(), RewardModelStage(), GRPOStage())}
    return [known[name] for name in recipe.stages]


def run_in_order(context: StageContext) -> dict:
    """The recipe's stages in order; the summary of each under its name (GRPO's at the top level)."""
    summary: dict = {}
    for stage in stages_of(context.recipe):
        part = stage.done(context) if context.resume else None
        if part is None:
            part = stage.run(context)
        else:
            console.print(f"{stage.name.replace('_', ' ')}: already done, continuing")
        if stage.name == "grpo":
            summary.update(part)
        elif part:
            summary[stage.name] = part
        context = stage.hand_over(context)
    return summary
