"""One GRPO update on a fixed rollout, run by each of torchrun's processes on its share of the groups:
`torchrun --nproc_per_node N tests/distributed_step.py RECIPE.yaml ROLLOUT.pt OUT.pt` (tests/test_distributed.py).

Writes the whole gradients at the optimizer step and the weights after it, the update's statistics, and the share of
the parameters, gradients and optimizer state this process held (elements held here over the whole tensors')."""

import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

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
    held = {}
    gradients = []

    def before_step(*_):  # the reduced gradients, as the optimizer is about to use them
        held["grads"] = share([p.grad for p in trainer.params])
        gradients.extend(whole([p.grad for p in trainer.params]))

    trainer.optimizer.register_step_pre_hook(before_step)
    stats = trainer.learn(rollout.take(rows), advantages[rows])
    held["params"] = share(trainer.params)
    held["optimizer"] = share([t for state in trainer.optimizer.state.values() for t in state.values() if t.dim()])
    params = whole(trainer.params)
    if ranks.main:
        torch.save({"params": params, "gradients": gradients, "stats": stats.record(), "held": held}, out)


def whole(tensors) -> list[torch.Tensor]:
    """The whole tensors (gathered from every process under fsdp; every process must call it)."""
    return [t.full_tensor() if isinstance(t, DTensor) else t.detach().clone() for t in tensors]


def share(tensors) -> float:
    """Elements this process holds of ``tensors`` over their whole elements."""
    local = sum(t.to_local().numel() if isinstance(t, DTensor) else t.numel() for t in tensors)
    return local / sum(t.numel() for t in tensors)


if __name__ == "__main__":
    main(*sys.argv[1:])
