"""How completions are scored: the recipe's rewards (what GRPO optimises) and the task metrics (what it is
judged by: accuracy against the reference answer and strict format, independent of the rewards' weights)."""

from __future__ import annotations

from thinktune.data import Example
from thinktune.rewards import RewardSet
from thinktune.rewards.answers import accuracy_reward
from thinktune.rewards.formatting import is_strict_format
from thinktune.rewards.gym import task_score_reward


class TaskMetrics:
    """Accuracy (the reasoning-gym scorer when the task has one, else math-verify) and strict format rate,
    shown during training and evaluation whatever rewards are optimised."""

    def __init__(self, answer_format: str, task_dataset=None):
        self.answer_format = answer_format
        self.task_dataset = task_dataset

    def accuracy(self, completions: list[str], examples: list[Example]) -> list[float] | None:
        """1.0 per correct completion; None when no example has a reference answer (e.g. texts to summarise)."""
        answers = [e.answer for e in examples]
        if not any(answers):
            return None
        if self.task_dataset is not None:
            scores = task_score_reward(
                None,
                completions,
                answers,
                metadata=[e.extra.get("metadata") for e in examples],
                question=[e.question for e in examples],
                task_dataset=self.task_dataset,
                answer_format=self.answer_format,
            )
            return [float(s == 1.0) for s in scores]
        return accuracy_reward(None, completions, answers, answer_format=self.answer_format)

    def format_ok(self, completions: list[str]) -> list[float]:
        return [float(is_strict_format(c, self.answer_format)) for c in completions]


def recipe_scoring(recipe, task_dataset, tokenizer=None) -> tuple[RewardSet, TaskMetrics]:
    """The recipe's rewards and task metrics, as training and evaluation both use them.

    Built-in rewards get what they need from here when a recipe does not set it in ``args``: the answer
    format, the reasoning-gym dataset (task_score), the tokenizer (token lengths), the completion limit and
    the run directory (its reward model).
    """
    fmt = recipe.data.answer_format
    context = {
        "answer_format": fmt,
        "task_dataset": task_dataset,
        "tokenizer": tokenizer,
        "max_new_tokens": recipe.grpo.max_new_tokens,
        "run_dir": str(recipe.run.path),
    }
    return RewardSet(recipe.rewards, context), TaskMetrics(fmt, task_dataset)


def with_reward_model(recipe, path: str):
    """The recipe, scoring with the reward model at ``path`` too: it replaces the folder of the recipe's
    ``reward_model`` reward, or is added with weight 0 (measured, not part of the total reward)."""
    from thinktune.config import RewardConfig

    rewards = [
        r.model_copy(update={"args": {**r.args, "path": path}}) if r.name == "reward_model" else r
        for r in recipe.rewards
    ]
    if rewards == recipe.rewards:
        rewards.append(RewardConfig(name="reward_model", weight=0.0, args={"path": path}))
    return recipe.model_copy(update={"rewards": rewards})
