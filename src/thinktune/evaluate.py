"""Held-out evaluation: greedy completions, and optionally k samples per problem (pass@k, mean@k, maj@k)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from thinktune.data import Example, PromptBuilder
from thinktune.rewards import RewardSet
from thinktune.rewards.answers import accuracy_reward
from thinktune.rewards.extract import extract_answer
from thinktune.rewards.formatting import is_strict_format
from thinktune.rewards.gym import task_score_reward
from thinktune.rollout import generate
from thinktune.stats import majority_correct, sampled_metrics
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


@dataclass
class Sampling:
    """How sampled evaluation draws: ``k`` completions per problem at the training temperature.

    The generator is seeded the same way for every evaluation, so before and after draw from the same
    uniform numbers: their difference comes from the model, less from the luck of the draw.
    """

    k: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0


def _generate_all(model, tokenizer, prompt_ids, *, max_new_tokens, batch_size, bar, sampling=None):
    """Completions (texts), lengths and truncation flags for every prompt; ``sampling.k`` per prompt if sampled."""
    completions, lengths, truncated = [], [], []
    if sampling:
        generator = torch.Generator().manual_seed(sampling.seed)
        settings = {"group_size": sampling.k, "temperature": sampling.temperature, "generator": generator}
        settings |= {"top_k": sampling.top_k, "top_p": sampling.top_p}
        per_chunk = max(1, batch_size // sampling.k)  # batch_size rows, as greedy
    else:
        settings, per_chunk = {"greedy": True}, batch_size
    eos = eos_token_ids(tokenizer)
    for start in range(0, len(prompt_ids), per_chunk):
        chunk = prompt_ids[start : start + per_chunk]
        out = generate(
            model,
            chunk,
            eos_ids=eos,
            pad_id=tokenizer.pad_token_id,
            max_new_tokens=max_new_tokens,
            **settings,
        )
        completions += decode(tokenizer, out.completion_ids, out.completion_mask)
        lengths += out.completion_lengths.tolist()
        truncated += out.truncated.tolist()
        bar.advance(len(chunk))
    return completions, lengths, truncated


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
    sampling: Sampling | None = None,
) -> EvalResult:
    """Greedy completions for every held-out example; accuracy, format accuracy, mean reward.

    With ``sampling``, also ``k`` sampled completions per example, summarised as mean@k, pass@j, maj@k and the
    share of examples whose samples are all wrong / all right (see :func:`thinktune.stats.sampled_metrics`).
    """
    kept = [(e, ids) for e in examples if (ids := prompts.ids(e.question)) is not None]
    ids = [i for _, i in kept]
    with progress(label, total=len(kept)) as bar:
        completions, lengths, truncated = _generate_all(
            model, tokenizer, ids, max_new_tokens=max_new_tokens, batch_size=batch_size, bar=bar
        )
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
    if sampling and accuracy is not None and used:
        with progress(f"{label}, {sampling.k} samples each", total=len(kept)) as bar:
            sampled, _, _ = _generate_all(
                model, tokenizer, ids, max_new_tokens=max_new_tokens, batch_size=batch_size, bar=bar, sampling=sampling
            )
        metrics.update(_summarise_samples(sampled, used, grader, sampling.k, samples))
    return EvalResult(metrics, samples)


def _summarise_samples(completions: list[str], examples: list[Example], grader, k: int, samples: list[dict]) -> dict:
    """Grade ``k`` completions per example (in order); record each example's count right; the sampled metrics."""
    repeated = [e for e in examples for _ in range(k)]
    correct = grader.accuracy(completions, repeated)
    answers = [extract_answer(c, grader.answer_format) for c in completions]
    counts, majority = [], []
    for i, sample in enumerate(samples):
        part = slice(i * k, (i + 1) * k)
        counts.append(int(sum(correct[part])))
        majority.append(majority_correct(answers[part], correct[part]))
        sample[f"correct_of_{k}"] = counts[-1]
    fmt = grader.format_ok(completions)
    return {**sampled_metrics(counts, majority, k), f"format@{k}": sum(fmt) / len(fmt)}


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
    """:func:`evaluate` with the recipe's prompts, completion budget, batch size and ``eval.samples``."""
    g = recipe.grpo
    k = recipe.eval.samples
    sampling = Sampling(k, g.temperature, g.top_k, g.top_p, recipe.eval.seed) if k else None
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
        sampling=sampling,
    )


def eos_token_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(i for i in ids if i is not None)
