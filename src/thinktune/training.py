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

import contextlib
import math
import random
import signal
import threading
import time

import torch
from torch.utils.weak import WeakIdKeyDictionary

from thinktune.console import console
from thinktune.environment import bf16_pays
from thinktune.savers import bitsandbytes


def make_optimizer(params: list[torch.nn.Parameter], lr: float, train) -> torch.optim.Optimizer:
    """AdamW over ``params`` with the recipe's betas and weight decay (``train`` section) at peak rate ``lr``: torch's,
    or with ``train.optimizer: adamw_8bit`` bitsandbytes' 8-bit one."""
    settings = {"lr": lr, "betas": train.adam_betas, "weight_decay": train.weight_decay}
    if train.optimizer == "adamw_8bit":
        return bitsandbytes("train.optimizer: adamw_8bit").optim.AdamW8bit(params, **settings)
    return torch.optim.AdamW(params, **settings)


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


@contextlib.contextmanager
def autocast(model: torch.nn.Module, mode: str):
    """The context the training passes' forward runs in: ``train.autocast`` ("none", "bf16" or "auto", see
    :func:`autocast_mode`) on ``model``'s device.

    Inside it matmuls run in bfloat16 while the weights, their gradients and the optimizer stay float32. Frozen
    float32 linear weights (a LoRA run's base) are handed to their layers as bfloat16 copies made once
    (:func:`frozen_bf16_weights`), the very numbers autocast would cast them to on every pass.

    >>> layer = torch.nn.Linear(2, 2)
    >>> with autocast(layer, "bf16"):
    ...     layer(torch.ones(1, 2)).dtype
    torch.bfloat16
    >>> with autocast(layer, "none"):
    ...     layer(torch.ones(1, 2)).dtype
    torch.float32
    """
    device = next(model.parameters()).device
    bf16 = autocast_mode(mode, device) == "bf16"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        with frozen_bf16_weights(model) if bf16 else contextlib.nullcontext():
            yield


def autocast_mode(mode: str, device: torch.device) -> str:
    """``train.autocast`` resolved on ``device``: ``auto`` is bf16 where bfloat16 compute pays
    (:func:`~thinktune.environment.bf16_pays`: CUDA, or a CPU whose bfloat16 matmuls time at least 1.4x faster),
    else none.

    >>> autocast_mode("auto", torch.device("mps")), autocast_mode("bf16", torch.device("mps"))
    ('none', 'bf16')
    """
    if mode == "auto":
        return "bf16" if bf16_pays(device) else "none"
    return mode


_BF16_COPIES = WeakIdKeyDictionary()  # frozen weight -> (its version, a copy)


@contextlib.contextmanager
def frozen_bf16_weights(model: torch.nn.Module):
    """Inside it, every linear layer of ``model`` whose weight is frozen and float32 holds a bfloat16 copy instead,
    made once and kept while the weight is unchanged (its version counter). Under autocast a frozen weight is cast
    again by every pass that reads it (autocast caches only trained leaves): in a LoRA update on SmolLM2, the whole
    base, 135 M weights, once per micro-batch and once more for the shared prompts. The layers get their own weights
    back on leaving; trained weights, embeddings and 4-bit or sharded weights are left alone. The copies cost 2 bytes a
    frozen weight (``thinktune memory`` counts them).

    >>> layer = torch.nn.Linear(2, 2).requires_grad_(False)
    >>> with frozen_bf16_weights(layer):
    ...     layer.weight.dtype
    torch.bfloat16
    >>> layer.weight.dtype
    torch.float32
    """
    swapped = []
    try:
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, torch.nn.Linear) and _frozen_float32(weight):
                version, copy = _BF16_COPIES.get(weight, (None, None))
                if version != weight._version:
                    copy = torch.nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False)
                    _BF16_COPIES[weight] = (weight._version, copy)
                swapped.append((module, weight))
                module.weight = copy
        yield
    finally:
        for module, weight in swapped:
            module.weight = weight


def _frozen_float32(weight) -> bool:
    """A frozen float32 weight held as a plain tensor (not a sharded or quantized one)."""
    return (
        isinstance(weight, torch.nn.Parameter)
        and type(weight.data) is torch.Tensor
        and weight.dtype == torch.float32
        and not weight.requires_grad
    )


class NonFiniteError(RuntimeError):
    """Training produced non-finite losses or gradients several steps in a row."""


def gradient_step(optimizer, scheduler, params: list[torch.nn.Parameter], max_grad_norm: float, loss=0.0) -> float:
    """Clip the accumulated gradients to ``max_grad_norm``, step the optimizer and the schedule, clear the
    gradients; returns the norm before clipping.

    A non-finite ``loss`` or gradient norm skips the optimizer step, so NaN never reaches the weights or AdamW's
    moments; the schedule still moves on. The norm is returned as it was (NaN or inf) for the caller to count.

    >>> w = torch.nn.Parameter(torch.ones(1))
    >>> opt = torch.optim.SGD([w], lr=0.1)
    >>> sched = make_scheduler(opt, "constant", 0, 10)
    >>> w.grad = torch.tensor([float("nan")])
    >>> gradient_step(opt, sched, [w], 1.0), w.item()
    (nan, 1.0)
    >>> w.grad = torch.tensor([0.5])
    >>> gradient_step(opt, sched, [w], 1.0), round(w.item(), 2)
    (0.5, 0.95)
    """
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm).item()
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)  # a step without gradients leaves every weight and moment alone
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


class NonFiniteGuard:
    """Counts optimizer steps skipped for a non-finite loss or gradient norm; ``patience`` in a row stop the run.

    >>> guard = NonFiniteGuard(patience=2)
    >>> guard.check(1, loss=0.3, grad_norm=float("nan")), guard.skipped
    (False, 1)
    >>> guard.check(2, loss=0.3, grad_norm=0.1), guard.in_a_row
    (True, 0)
    """

    def __init__(self, patience: int = 3):
        self.patience, self.skipped, self.in_a_row = patience, 0, 0

    def check(self, step: int, loss: float, grad_norm: float) -> bool:
        """Whether step ``step`` was taken; raises :class:`NonFiniteError` after ``patience`` skipped in a row."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= self.patience:
            raise NonFiniteError(
                f"step {step}: loss {loss}, gradient norm {grad_norm}: {self.in_a_row} optimizer steps in a row "
                f"were skipped for non-finite values (the weights are as they were before the first); lower "
                f"the learning rate, or look at the rewards and the completions of these steps"
            )
        return False


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

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "order": list(self.order)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.order = list(state["order"])


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after a finished, checkpointed step."""

    def __init__(self, step: int):
        super().__init__(f"stopped after step {step}; its checkpoint is saved")
        self.step = step


@contextlib.contextmanager
def stop_requests():
    """Catch SIGINT (Ctrl-C) and SIGTERM while training: the first asks the loop to stop after the step it is
    on (``handle.requested``); a second one stops at once. Outside the main thread signals cannot be caught:
    nothing changes there."""

    class Handle:
        requested = False

    handle = Handle()
    if threading.current_thread() is not threading.main_thread():
        yield handle
        return

    def ask(signum, frame):
        if handle.requested:
            raise KeyboardInterrupt
        handle.requested = True

    previous = {sig: signal.signal(sig, ask) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield handle
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class CheckpointPolicy:
    """When a training loop checkpoints, the same rule for GRPO, SFT and the reward model: every
    ``run.save_every`` steps, once ``run.save_minutes`` have passed since the last checkpoint, after the last step
    (``at_end``; SFT and the reward model skip it, their saved model marks the stage done), and whenever the loop
    is about to stop (a stop request, a regression alarm).

    >>> from thinktune.config import RunConfig
    >>> policy = CheckpointPolicy(RunConfig(save_every=2, save_minutes=0), total=5, at_end=True)
    >>> [done for done in range(1, 6) if policy.due(done)], policy.due(3, stopping=True)
    ([2, 4, 5], True)
    >>> [done for done in range(1, 6) if CheckpointPolicy(RunConfig(save_every=5), total=5, at_end=False).due(done)]
    []
    """

    def __init__(self, run, total: int, at_end: bool):
        self.every, self.minutes, self.total, self.at_end = run.save_every, run.save_minutes, total, at_end
        self.last = time.monotonic()

    def due(self, done: int, stopping: bool = False) -> bool:
        if stopping or (self.at_end and done == self.total):
            return True
        if done == self.total:  # the stage's own saved model follows
            return False
        by_steps = self.every and done % self.every == 0
        return bool(by_steps or (self.minutes and time.monotonic() - self.last >= 60 * self.minutes))

    def saved(self) -> None:
        self.last = time.monotonic()


class StageCheckpoints:
    """Checkpoints of a stage's training loop (``sft``, ``reward_model``): resume from the newest one with the
    stage's logs rewound to it; save as :class:`CheckpointPolicy` says (not after the last step: the stage's saved
    model marks it done), and after a stop request, stop.

        checkpoints = StageCheckpoints(run, recipe, model, {"optimizer": opt, ...}, "sft", tracker, total=100)
        start = checkpoints.resume() if resume else 0
        with stop_requests() as stop:
            for step in range(start, 100):
                ...
                checkpoints.after_step(step + 1, stop)
    """

    def __init__(self, run, recipe, model, parts: dict, stage: str, tracker, total: int, ranks=None):
        self.run, self.recipe, self.model, self.parts = run, recipe, model, parts
        self.stage, self.tracker, self.total = stage, tracker, total
        self.main, self.any = (True, bool) if ranks is None else (ranks.main, ranks.any)  # several: process 0 saves
        self.policy = CheckpointPolicy(recipe.run, total, at_end=False)

    def resume(self) -> int:
        """Restore the newest checkpoint (if any) and forget what was logged after it; the steps done."""
        start = 0
        if self.run.has_checkpoint(self.stage):
            start = self.run.load_checkpoint(self.recipe, self.model, self.parts, stage=self.stage)
            console.print(f"{self.stage}: resumed after step {start}")
        self.tracker.rewind(start, stage=self.stage)
        return start

    def after_step(self, done: int, stop) -> None:
        stopping = self.any(stop.requested)  # a stop asked of one process stops them all, at the same step
        if self.policy.due(done, stopping=stopping):
            if self.main:
                self.run.save_checkpoint(done, self.recipe, self.model, self.parts, stage=self.stage)
            self.policy.saved()
        if stopping:
            raise Interrupted(done)
