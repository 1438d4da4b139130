"""`torchrun --nproc_per_node N tests/distributed_parts.py RECIPE.yaml OUT_PREFIX` (tests/test_distributed.py):
what several processes compute in parts, written for the test to compare with one process.

- Advantages under ``scale_rewards: batch``: every process takes its share of one batch of rewards (4 groups of 4,
  one reward unscorable) and writes what :func:`shared_advantages` gives it (``OUT_PREFIX-advantages-<rank>.pt``).
- An evaluation of the recipe's held-out set, greedy and sampled, generated in parts: process 0 writes the result
  (``OUT_PREFIX-evaluation.pt``).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from thinktune.data import load_examples  # noqa: E402
from thinktune.distributed import SINGLE, from_environment  # noqa: E402
from thinktune.evaluation import evaluate_recipe  # noqa: E402
from thinktune.grpo.advantages import shared_advantages  # noqa: E402
from thinktune.models import load_policy  # noqa: E402
from thinktune.recipe import load_recipe  # noqa: E402
from thinktune.rewards.scoring import recipe_scoring  # noqa: E402
from thinktune.rollout import make_backend  # noqa: E402

REWARDS = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0, 0.0, 3.0, 1.0, 1.0, 0.2, 0.9, 0.4, 0.0])
SCORABLE = torch.tensor([True] * 13 + [False, True, True])


def evaluation(recipe_file: str, ranks=SINGLE):
    """The recipe's held-out evaluation of its model, generated over ``ranks`` (None on all but process 0)."""
    recipe = load_recipe(recipe_file)
    _, held_out, task_dataset = load_examples(recipe.data, recipe.eval.split)
    model, tokenizer = load_policy(recipe.model)
    rewards, task = recipe_scoring(recipe, task_dataset, tokenizer)
    return evaluate_recipe(make_backend(recipe.rollout, model, tokenizer), recipe, held_out, rewards, task, ranks=ranks)


if __name__ == "__main__":
    recipe_file, out = sys.argv[1:3]
    ranks = from_environment(torch.device("cpu"))
    rows = ranks.share(list(range(16)))
    advantages, flat = shared_advantages(REWARDS[rows], 4, "batch", SCORABLE[rows], ranks)
    torch.save((rows, advantages, flat), f"{out}-advantages-{ranks.rank}.pt")
    result = evaluation(recipe_file, ranks)
    if ranks.main:
        torch.save(result, f"{out}-evaluation.pt")
