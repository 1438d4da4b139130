"""Several processes, one run, with PyTorch's own launcher and collectives:

    torchrun --nproc_per_node 2 -m thinktune.cli train RECIPE.yaml [key=value ...]

In GRPO every process draws the same ``prompts_per_step`` prompts; each samples, scores and trains on its own
contiguous share of them (groups never straddle processes, so advantages stay per group). The losses are
normalised by the totals of the whole step (tokens, rows), and DDP or FSDP (``train.distributed``,
:mod:`thinktune.parallel`) reduce the gradients, so the update is the one a single process would make on all the
prompts. SFT and the reward model split each batch the same way on DDP; pairs and evaluations split their
generation, and process 0 gathers it. Process 0 alone logs, scores evaluations, checkpoints and saves; the others
wait for it. ``gloo`` on CPUs, ``nccl`` on GPUs. Here: the processes' places (:class:`Ranks`) and the small
reductions of numbers and objects between them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place among ``world`` processes; the single-process default does no communication."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, items: list) -> list:
        """This process's contiguous share of ``items`` (their count must divide by ``world``).

        >>> Ranks(1, 2).share([10, 11, 12, 13])
        [12, 13]
        """
        size = len(items) // self.world
        return items[self.rank * size : (self.rank + 1) * size]

    def part(self, items: list) -> list:
        """This process's contiguous part of ``items`` when they need not divide: the last parts are shorter, or
        empty.

        >>> [Ranks(r, 3).part([10, 11, 12, 13]) for r in range(3)]
        [[10, 11], [12, 13], []]
        """
        size = -(-len(items) // self.world)
        return items[self.rank * size : (self.rank + 1) * size]

    def sum(self, value: float) -> float:
        return self._reduce(value, dist.ReduceOp.SUM)

    def max(self, value: float) -> float:
        return self._reduce(value, dist.ReduceOp.MAX)

    def any(self, flag: bool) -> bool:
        return bool(self._reduce(float(flag), dist.ReduceOp.MAX))

    def _reduce(self, value: float, op) -> float:
        if self.world == 1:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(tensor, op=op)
        return tensor.item()

    def gather(self, item):
        """Every process's ``item``, in rank order, on every process."""
        if self.world == 1:
            return [item]
        items = [None] * self.world
        dist.all_gather_object(items, item)
        return items

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


SINGLE = Ranks()


def from_environment(device: torch.device) -> Ranks:
    """The ranks torchrun (or ``accelerate launch``) set in the environment; one process when there are none."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return SINGLE
    if not dist.is_initialized():
        if device.type == "cuda":  # "cuda" is then this process's own GPU; Ranks reduces CPU numbers through gloo
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size())
