"""The pieces every training loop shares (GRPO, SFT, the reward model): optimizer, learning-rate schedule,
batches from epoch shuffles, and the gradient step. A guard or a resume added here holds for all three.

    optimizer = make_optimizer(params, lr=1e-4, train=recipe.train)
    scheduler = make_scheduler(optimizer, "cosine", warmup=10, total=200)
    batches = EpochBatches(len(data), seed=0)
    for step in range(200):
        rows = batches.next(8)
        ...loss.backward()
        grad_norm = gradient_step(optimizer, scheduler, params, max_grad_norm=1.0)
"""

from __future__ import annotations

import math
import random

import torch


def make_optimizer(params: list[torch.nn.Parameter], lr: float, train) -> torch.optim.AdamW:
    """AdamW over ``params`` with the recipe's betas and weight decay (``train`` section) at peak rate ``lr``."""
    return torch.optim.AdamW(params, lr=lr, betas=train.adam_betas, weight_decay=train.weight_decay)


def lr_factor(step: int, kind: str, warmup: int, total: int) -> float:
    """Multiplier of the peak rate at ``step``: linear warmup over ``warmup`` steps, then constant, or linear or
    cosine decay to 0 at ``total``.

    >>> [lr_factor(s, "linear", warmup=2, total=6) for s in range(6)]
    [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    >>> round(lr_factor(4, "cosine", warmup=2, total=6), 3)  # half way through the decay
    0.5
    """
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer, kind: str, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule :func:`lr_factor` describes, stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, kind, warmup, total))


def gradient_step(optimizer, scheduler, params: list[torch.nn.Parameter], max_grad_norm: float) -> float:
    """Clip the accumulated gradients to ``max_grad_norm``, step the optimizer and the schedule, clear the
    gradients; returns the norm before clipping."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm.item()


class EpochBatches:
    """Batches of row indices from successive shuffles of ``range(size)``: every row once per epoch, and a batch
    that crosses an epoch's end continues into the next shuffle.

    >>> batches = EpochBatches(3, seed=0)
    >>> first, second = batches.next(2), batches.next(2)
    >>> sorted(first + second[:1]) == [0, 1, 2]
    True
    """

    def __init__(self, size: int, seed: int):
        self.size = size
        self.rng = random.Random(seed)
        self.order: list[int] = []

    def next(self, count: int) -> list[int]:
        while len(self.order) < count:
            epoch = list(range(self.size))
            self.rng.shuffle(epoch)
            self.order += epoch
        batch, self.order = self.order[:count], self.order[count:]
        return batch
