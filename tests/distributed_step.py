"""One GRPO update on a fixed rollout, run by each of torchrun's processes on its share of the groups:
`torchrun --nproc_per_node N tests/distributed_step.py RECIPE.yaml ROLLOUT.pt OUT.pt` (tests/test_distributed.py)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from thinktune.data import load_examples  # noqa: E402
from thinktune.distributed import from_environment  # noqa: E402
from thinktune.grpo.trainer import GRPOTrainer  # noqa: E402
from thinktune.recipe import load_recipe  # noqa: E402
from thinktune.run_dir import RunDir  # noqa: E402
from thinktune.tracking import Trackers  # noqa: E402


def main(recipe_file: str, rollout_file: str, out: str) -> None:
    recipe = load_recipe(recipe_file)
    torch.manual_seed(recipe.train.seed)
    ranks = from_environment(torch.device("cpu"))
    train_set, _, task_dataset = load_examples(recipe.data, recipe.eval.split)
    trainer = GRPOTrainer.from_recipe(recipe, train_set, task_dataset, RunDir(recipe, attach=True), Trackers([]), ranks)
    rollout, advantages = torch.load(rollout_file, weights_only=False)
    rows = torch.tensor(ranks.share(list(range(advantages.numel()))))  # whole groups: G divides each share
    stats = trainer.learn(rollout.take(rows), advantages[rows])
    if ranks.main:
        torch.save({"params": [p.detach() for p in trainer.params], "stats": stats.record()}, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
