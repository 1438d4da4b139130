"""Reward registry and built-in reward functions.

A reward function has the TRL-compatible signature ``fn(prompts, completions, **columns) -> list[float | None]``
where ``columns`` are the dataset's columns (``answer``, ``question``, ``metadata``, …), one list entry per
completion. ``None`` means "not applicable" and is masked out of that function's mean and of the sum.
"""

# The built-in modules register their rewards as they are imported: importing the package makes every one known.
from thinktune.rewards import answers, formatting, gym, length, reward_model
from thinktune.rewards.registry import REWARDS, RewardError, RewardSet, register_reward

__all__ = ["REWARDS", "RewardError", "RewardSet", "register_reward", "answers", "formatting", "gym", "length",
           "reward_model"]  # fmt: skip
