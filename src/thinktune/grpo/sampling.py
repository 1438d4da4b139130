"""Which training prompts a step draws.

:class:`PromptSampler` walks a per-epoch shuffle of the training pool. With the ``pass_rate`` curriculum it
remembers each prompt's pass rate and skips prompts the model always or never solves more often than
those it sometimes solves: only those give a group whose rewards differ, and so a gradient.
"""

from __future__ import annotations

import random


def curriculum_weight(pass_rate: float | None, floor: float) -> float:
    """Draw weight of a prompt: 1 if unseen, else ``max(4 p (1 - p), floor)``, highest at p = 0.5.

    >>> curriculum_weight(None, 0.1), curriculum_weight(0.5, 0.1), curriculum_weight(0.25, 0.1)
    (1.0, 1.0, 0.75)
    >>> curriculum_weight(1.0, 0.1), curriculum_weight(0.0, 0.1)  # solved / unsolved: back now and then
    (0.1, 0.1)
    """
    if pass_rate is None:
        return 1.0
    return max(4 * pass_rate * (1 - pass_rate), floor)


class PromptSampler:
    """Indices into a pool of ``size`` prompts: consecutive slices of a per-epoch shuffle.

    Without a curriculum, draw ``n`` at step ``s`` gives the same prompts as slice ``[s·n, (s+1)·n)`` of the
    shuffled stream. With ``curriculum="pass_rate"``, each candidate is taken with probability
    :func:`curriculum_weight` of its running pass rate (an average that halves the weight of older visits),
    else passed over until its next epoch. The state (:meth:`state_dict`) is saved with checkpoints.

    >>> sampler = PromptSampler(4, seed=0, curriculum="pass_rate", floor=0.0)
    >>> first = sampler.draw(4)
    >>> for index in first[:3]:
    ...     sampler.observe(index, 1.0)  # solved every time: weight 0 with floor 0
    >>> sampler.observe(first[3], 0.5)
    >>> sampler.draw(2) == [first[3], first[3]], sampler.rejected >= 3  # the next two epochs: only the half-solved one
    (True, True)
    """

    def __init__(self, size: int, seed: int = 0, curriculum: str = "none", floor: float = 0.1):
        if size <= 0:
            raise ValueError("PromptSampler needs at least one prompt")
        self.size, self.seed, self.curriculum, self.floor = size, seed, curriculum, floor
        self.cursor = 0  # candidates looked at so far
        self.rejected = 0  # candidates the curriculum passed over
        self.pass_rate: dict[int, float] = {}
        self.rng = random.Random(seed * 7_919 + 1)
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(self.size))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._orders = {epoch: order}  # one epoch at a time is enough
        return self._orders[epoch]

    def draw(self, n: int) -> list[int]:
        chosen = []
        while len(chosen) < n:
            epoch, position = divmod(self.cursor, self.size)
            self.cursor += 1
            index = self._order(epoch)[position]
            if self.curriculum == "pass_rate":
                weight = curriculum_weight(self.pass_rate.get(index), self.floor)
                if self.rng.random() >= weight:
                    self.rejected += 1
                    continue
            chosen.append(index)
        return chosen

    def observe(self, index: int, pass_rate: float) -> None:
        """Record a group's pass rate for prompt ``index`` (the mean with the previous estimate)."""
        old = self.pass_rate.get(index)
        self.pass_rate[index] = pass_rate if old is None else (old + pass_rate) / 2

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "rejected": self.rejected, "pass_rate": dict(self.pass_rate),
                "rng": self.rng.getstate()}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.cursor, self.rejected = state["cursor"], state["rejected"]
        self.pass_rate = dict(state["pass_rate"])
        self.rng.setstate(state["rng"])
