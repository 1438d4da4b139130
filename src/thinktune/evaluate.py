"""Held-out evaluation (greedy) and the before/after comparison."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from thinktune.data import Example, PromptBuilder
from thinktune.rewards import RewardSet
from thinktune.rewards.answers import accuracy_reward
from thinktune.rewards.formatting import is_strict_format
from thinktune.rewards.gym import task_score_reward
from thinktune.rollout import generate
from thinktune.tracking import progress


class Grader:
    """Task metrics shown during training and evaluation, independent of the rewards being optimised:
    accuracy (the reasoning-gym scorer when the task has one, else math-verify) and strict format rate."""

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


@dataclass
class EvalResult:
    metrics: dict[str, float]
    samples: list[dict] = field(default_factory=list)


def decode(tokenizer, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return [tokenizer.decode(row[m.bool()], skip_special_tokens=True) for row, m in zip(ids, mask, strict=True)]


def evaluate(
    model,
    tokenizer,
    examples: list[Example],
    prompts: PromptBuilder,
    rewards: RewardSet,
    grader: Grader,
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    label: str = "eval",
) -> EvalResult:
    """Greedy completions for every held-out example; accuracy, format accuracy, mean reward."""
    kept = [(e, ids) for e in examples if (ids := prompts.ids(e.question)) is not None]
    completions, lengths, truncated = [], [], []
    eos = eos_token_ids(tokenizer)
    with progress(label, total=len(kept)) as bar:
        for start in range(0, len(kept), batch_size):
            chunk = kept[start : start + batch_size]
            out = generate(
                model,
                [ids for _, ids in chunk],
                eos_ids=eos,
                pad_id=tokenizer.pad_token_id,
                max_new_tokens=max_new_tokens,
                greedy=True,
            )
            completions += decode(tokenizer, out.completion_ids, out.completion_mask)
            lengths += out.completion_lengths.tolist()
            truncated += out.truncated.tolist()
            bar.advance(len(chunk))
    used = [e for e, _ in kept]
    prompt_texts = [prompts.text(e.question) for e in used]
    scores = rewards.score(prompt_texts, completions, [e.columns() for e in used])
    accuracy = grader.accuracy(completions, used)
    fmt = grader.format_ok(completions)
    n = max(len(used), 1)
    metrics = {
        "n": len(used),
        "skipped_prompts": len(examples) - len(used),
        **({"accuracy": sum(accuracy) / n} if accuracy is not None else {}),
        "format_accuracy": sum(fmt) / n,
        "reward": scores.total.mean().item() if used else 0.0,
        "completion_length": sum(lengths) / n,
        "truncation_rate": sum(truncated) / n,
    }
    for name, row in zip(scores.names, scores.per_function, strict=True):
        metrics[f"reward/{name}"] = torch.nanmean(row).item() if used else 0.0
    samples = [
        {"question": e.question, "answer": e.answer, "completion": c, "correct": a, "format": f}
        for e, c, a, f in zip(used, completions, accuracy or [None] * len(used), fmt, strict=True)
    ]
    return EvalResult(metrics, samples)


def recipe_scoring(recipe, task_dataset, tokenizer=None) -> tuple[RewardSet, Grader]:
    """The recipe's rewards and the task grader, as training and evaluation both use them.

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
        "run_dir": str(Path(recipe.run.output_dir) / recipe.run.name),
    }
    return RewardSet(recipe.rewards, context), Grader(fmt, task_dataset)


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


def evaluate_recipe(model, tokenizer, recipe, examples, rewards, grader, label: str = "eval") -> EvalResult:
    """:func:`evaluate` with the recipe's prompts, completion budget and batch size."""
    return evaluate(
        model,
        tokenizer,
        examples,
        PromptBuilder.from_config(tokenizer, recipe.data),
        rewards,
        grader,
        max_new_tokens=recipe.eval.max_new_tokens or recipe.grpo.max_new_tokens,
        batch_size=recipe.eval.batch_size,
        label=label,
    )


def eos_token_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(i for i in ids if i is not None)


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion.

    >>> [round(v, 3) for v in wilson_interval(20, 200)]
    [0.066, 0.149]
    >>> wilson_interval(0, 40)[0]  # exactly 0, not a rounding residue printed as -0.000
    0.0
    """
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_sign_test(before: list[float], after: list[float]) -> dict[str, float]:
    """Exact two-sided sign test on paired 0/1 outcomes: how likely a gap this large is under no change.

    Counts problems fixed (0 → 1) and broken (1 → 0); ties carry no information.

    >>> paired_sign_test([0, 0, 0, 1], [1, 1, 1, 1])
    {'fixed': 3, 'broken': 0, 'p_value': 0.25}
    """
    from math import comb

    fixed = sum(1 for b, a in zip(before, after, strict=True) if a > b)
    broken = sum(1 for b, a in zip(before, after, strict=True) if a < b)
    n, k = fixed + broken, min(fixed, broken)
    p = min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {"fixed": fixed, "broken": broken, "p_value": p}
