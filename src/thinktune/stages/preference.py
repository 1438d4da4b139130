"""The preference stages: ``pairs`` writes (or continues) the pairs file, ``reward_model`` trains a Bradley-Terry
reward model on it."""

from __future__ import annotations

from thinktune.pairs import build_pairs
from thinktune.preference import train_reward_model
from thinktune.run_dir import STAGE_OUTPUTS
from thinktune.stages import Stage


class PairsStage(Stage):
    """Never done in advance: the pairs file is continued after its last whole line, or found complete."""

    name = "pairs"
    outputs = STAGE_OUTPUTS["pairs"]

    def run(self, context) -> dict:
        path = build_pairs(context.recipe, context.splits.train, context.ranks)
        context.ranks.barrier()  # the reward model reads what process 0 wrote
        return {"path": str(path)}


class RewardModelStage(Stage):
    name = "reward_model"
    outputs = STAGE_OUTPUTS["reward_model"]

    def done(self, context) -> dict | None:
        return context.run.read_json("reward_model_summary.json")

    def run(self, context) -> dict:
        summary = train_reward_model(context.recipe, context.run, context.tracker, context.resume, context.ranks)
        context.ranks.barrier()  # the stages after it read the reward model process 0 saved
        return summary
