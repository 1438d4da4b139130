"""`torchrun --nproc_per_node N tests/distributed_advantages.py OUT_PREFIX`: every process takes its share of one
batch of rewards (4 groups of 4, one reward unscorable) and writes the advantages
:func:`shared_advantages` gives it under ``scale_rewards: batch`` (tests/test_distributed.py)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from thinktune.distributed import from_environment  # noqa: E402
from thinktune.grpo.advantages import shared_advantages  # noqa: E402

REWARDS = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0, 0.0, 3.0, 1.0, 1.0, 0.2, 0.9, 0.4, 0.0])
SCORABLE = torch.tensor([True] * 13 + [False, True, True])

if __name__ == "__main__":
    ranks = from_environment(torch.device("cpu"))
    rows = ranks.share(list(range(16)))
    advantages, flat = shared_advantages(REWARDS[rows], 4, "batch", SCORABLE[rows], ranks)
    torch.save((rows, advantages, flat), f"{sys.argv[1]}-{ranks.rank}.pt")
