"""The step's batch: G scored completions for each of several prompts, with their advantages.

A rollout round builds one :class:`Groups`; dynamic sampling keeps the groups with spread from several rounds and
joins them (:meth:`Groups.take`, :meth:`Groups.cat`). The update trains on the kept groups, and the step's record
describes every group drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from thinktune.data import Example
from thinktune.rewards.registry import Incidents, RewardScores
from thinktune.rollout import Rollout


@dataclass
class Groups:
    """G scored completions for each of several prompts; row ``i`` belongs to group ``i // G``."""

    group_size: int
    indices: list[int]  # each group's prompt, as an index into the training pool
    examples: list[Example]
    texts: list[str]  # each group's prompt text
    rollout: Rollout
    completions: list[str]
    scores: RewardScores
    advantages: torch.Tensor  # [rows]
    flat: torch.Tensor  # [groups] bool: every reward of the group equal
    correct: list[float] | None  # [rows] the task's accuracy metric, None without reference answers

    @property
    def size(self) -> int:
        return len(self.indices)

    def take(self, groups: list[int]) -> Groups:
        """Only the given groups, in that order."""
        g = self.group_size
        rows = torch.tensor([group * g + j for group in groups for j in range(g)], dtype=torch.long)
        return Groups(
            g,
            [self.indices[i] for i in groups],
            [self.examples[i] for i in groups],
            [self.texts[i] for i in groups],
            self.rollout.take(rows),
            [self.completions[r] for r in rows.tolist()],
            RewardScores(
                self.scores.names, self.scores.per_function[:, rows], self.scores.total[rows], self.scores.incidents
            ),
            self.advantages[rows],
            self.flat[torch.tensor(groups, dtype=torch.long)],
            None if self.correct is None else [self.correct[r] for r in rows.tolist()],
        )

    @staticmethod
    def cat(parts: list[Groups], pad_id: int) -> Groups:
        """The groups of every part, in order (tensors padded to the widest part)."""
        first = parts[0]
        scores = [p.scores for p in parts]
        return Groups(
            first.group_size,
            [i for p in parts for i in p.indices],
            [e for p in parts for e in p.examples],
            [t for p in parts for t in p.texts],
            Rollout.cat([p.rollout for p in parts], pad_id),
            [c for p in parts for c in p.completions],
            RewardScores(
                first.scores.names,
                torch.cat([s.per_function for s in scores], dim=1),
                torch.cat([s.total for s in scores]),
                sum((s.incidents for s in scores), Incidents()),
            ),
            torch.cat([p.advantages for p in parts]),
            torch.cat([p.flat for p in parts]),
            None if first.correct is None else [c for p in parts for c in p.correct],
        )


def pass_rate(groups: Groups, group: int) -> float:
    """Share of the group that was right; without reference answers, 0.5 if its rewards differ, else 0.

    >>> g = Groups(2, [7, 8], [], [], None, [], None, None, torch.tensor([False, True]), [1.0, 0.0, 0.0, 0.0])
    >>> pass_rate(g, 0), pass_rate(g, 1)
    (0.5, 0.0)
    """
    g = groups.group_size
    if groups.correct is None:
        return 0.0 if groups.flat[group] else 0.5
    return sum(groups.correct[group * g : (group + 1) * g]) / g
