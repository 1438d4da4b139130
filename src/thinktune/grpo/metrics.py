"""What a GRPO step reports: one record per step (``metrics.jsonl``) and a few of its completions."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict

import torch

from thinktune.grpo.groups import Groups
from thinktune.grpo.update import UpdateStats
from thinktune.rewards.registry import RewardScores


class PhaseTimes:
    """Seconds a step spent in each phase (``rollout``, ``score``, ``update``), summed over the step's rounds.

    >>> times = PhaseTimes()
    >>> with times.timed("score"):
    ...     pass
    >>> times["score"] >= 0.0, times["update"]
    (True, 0.0)
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def timed(self, phase: str):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self[phase] + time.perf_counter() - began

    def __getitem__(self, phase: str) -> float:
        return self.seconds.get(phase, 0.0)


def step_record(
    drawn: Groups, format_ok: list[float], update: UpdateStats, sampling: dict, lr: float, times: PhaseTimes
) -> dict:
    """The step's record: the policy as sampled (every drawn completion, kept or not), the update's statistics,
    how sampling went, grading incidents this step and where the time went."""
    lengths = drawn.rollout.completion_lengths.float()
    generated = lengths.sum().item()
    rollout, score, update_seconds = times["rollout"], times["score"], times["update"]
    return {
        "reward": drawn.scores.total.mean().item(),
        "reward_std": drawn.scores.total.std().item(),
        "accuracy": _mean(drawn.correct or [math.nan]),
        "format": _mean(format_ok),
        **per_function(drawn.scores),
        **update.record(),
        "lr": lr,
        "completion_length": lengths.mean().item(),
        "completion_length_max": lengths.max().item(),
        "truncation_rate": drawn.rollout.truncated.float().mean().item(),
        "zero_std_groups": drawn.flat.float().mean().item(),  # of every group drawn
        # completions every reward function returned None for: left out of their group's statistics, advantage 0
        "unscorable": int((~drawn.scores.scorable).sum()),
        **sampling,
        **asdict(drawn.scores.incidents),  # grader_timeouts, grader_errors, reward_timeouts
        "seconds_rollout": rollout,
        "seconds_score": score,
        "seconds_update": update_seconds,
        "generated_tokens_per_s": generated / max(rollout, 1e-9),
        "tokens_per_s": generated / max(rollout + score + update_seconds, 1e-9),
    }


def sample_rows(drawn: Groups, groups: int) -> list[dict]:
    """Every completion of the first ``groups`` groups (all of them for -1): the prompt, the completion, the
    total reward and each function's, the advantage, the length in tokens and whether it was cut off."""
    count = drawn.size if groups < 0 else min(groups, drawn.size)
    lengths = drawn.rollout.completion_mask.sum(-1).tolist()
    rows = []
    for row in range(count * drawn.group_size):
        example = drawn.examples[row // drawn.group_size]
        rows.append(
            {
                "group": row // drawn.group_size,
                "question": example.question,
                "answer": example.answer,
                "completion": drawn.completions[row],
                "reward": drawn.scores.total[row].item(),
                **{
                    f"reward/{name}": drawn.scores.per_function[i, row].item()
                    for i, name in enumerate(drawn.scores.names)
                },
                "advantage": drawn.advantages[row].item(),
                "length": int(lengths[row]),
                "truncated": bool(drawn.rollout.truncated[row]),
            }
        )
    return rows


def per_function(scores: RewardScores) -> dict[str, float]:
    """Mean and std of each reward function over the completions it applies to (NaN = not applicable).

    >>> per_function(RewardScores(["a"], torch.tensor([[1.0, float("nan"), 0.0]]), torch.zeros(3)))
    {'reward/a': 0.5, 'reward/a_std': 0.7071067690849304}
    """
    out = {}
    for name, row in zip(scores.names, scores.per_function, strict=True):
        valid = row[~torch.isnan(row)]
        out[f"reward/{name}"] = valid.mean().item() if valid.numel() else math.nan
        out[f"reward/{name}_std"] = valid.std().item() if valid.numel() > 1 else 0.0
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
