"""What a GRPO step reports: one record per step (``metrics.jsonl``) and a few of its completions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from thinktune.grpo.sampling import Groups
from thinktune.rewards.registry import RewardScores


@dataclass
class StepTimes:
    """Seconds a step spent sampling (every round), scoring, and updating the policy."""

    rollout: float
    score: float
    update: float


def step_record(
    drawn: Groups, format_ok: list[float], update: dict, sampling: dict, lr: float, times: StepTimes, incidents
) -> dict:
    """The step's record: the policy as sampled (every drawn completion, kept or not), the update's statistics,
    how sampling went, grading incidents (``(grader timeouts, grader errors, reward timeouts)`` this step) and
    where the time went."""
    lengths = drawn.rollout.completion_lengths.float()
    generated = lengths.sum().item()
    return {
        "reward": drawn.scores.total.mean().item(),
        "reward_std": drawn.scores.total.std().item(),
        "accuracy": _mean(drawn.correct or [math.nan]),
        "format": _mean(format_ok),
        **per_function(drawn.scores),
        "kl": update["kl"],
        "entropy": update["entropy"],
        "clip_fraction": update["clip"],
        "loss": update["loss"],
        "grad_norm": update["grad_norm"],
        "nonfinite_skipped": update["nonfinite_skipped"],  # 1: the update was skipped (NaN/inf loss or gradient)
        "trained_rows": update["trained_rows"],
        # mean |log-prob| gap between the rollout engine and the trainer (a backend with its own kernels only),
        # and with rollout.correction the mean weight it gave and the share of tokens it dropped
        **{key: update[key] for key in ("logprob_mismatch", "correction_weight", "correction_masked") if key in update},
        "lr": lr,
        "completion_length": lengths.mean().item(),
        "completion_length_max": lengths.max().item(),
        "truncation_rate": drawn.rollout.truncated.float().mean().item(),
        "zero_std_groups": drawn.flat.float().mean().item(),  # of every group drawn
        # completions every reward function returned None for: left out of their group's statistics, advantage 0
        "unscorable": int((~drawn.scores.scorable).sum()),
        **sampling,
        # completions whose grading hit the time bound or failed (scored 0), this step
        "grader_timeouts": incidents[0],
        "grader_errors": incidents[1],
        # calls of a user's reward function abandoned at rewards[].timeout (their batch scored None), this step
        "reward_timeouts": incidents[2],
        "seconds_rollout": times.rollout,
        "seconds_score": times.score,
        "seconds_update": times.update,
        "generated_tokens_per_s": generated / max(times.rollout, 1e-9),
        "tokens_per_s": generated / max(times.rollout + times.score + times.update, 1e-9),
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


def pass_rate(groups: Groups, group: int) -> float:
    """Share of the group that was right; without reference answers, 0.5 if its rewards differ, else 0.

    >>> g = Groups(2, [7, 8], [], [], None, [], None, None, torch.tensor([False, True]), [1.0, 0.0, 0.0, 0.0])
    >>> pass_rate(g, 0), pass_rate(g, 1)
    (0.5, 0.0)
    """
    g = groups.group_size
    if groups.correct is None:
        return 0.0 if groups.flat[group] else 0.5
    return _mean(groups.correct[group * g : (group + 1) * g])


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
