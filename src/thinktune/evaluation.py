"""Evaluation on the held-out (or validation) set: greedy completions, and optionally k samples per problem
(pass@k, mean@k, maj@k)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import torch

from thinktune.config import EVALUATED, tagged_fields
from thinktune.console import progress
from thinktune.data import Example, PromptBuilder
from thinktune.distributed import SINGLE, Ranks
from thinktune.rewards import RewardSet
from thinktune.rewards.extract import extract_answer
from thinktune.rewards.scoring import TaskMetrics
from thinktune.rollout import RolloutBackend, SamplingParams
from thinktune.stats import majority_correct, sampled_metrics
from thinktune.tokens import decode


def evaluation_key(recipe) -> str:
    """A fingerprint of what an evaluation of the recipe's starting model depends on: the model, the data, the
    evaluation settings, the sampling settings it borrows and the rewards. Saved with each evaluation, so one on
    disk is reused only when it was made the same way.

    >>> from thinktune.recipe import load_recipe
    >>> evaluation_key(load_recipe(None)) == evaluation_key(load_recipe(None, ["train.steps=5", "eval.every=2"]))
    True
    >>> evaluation_key(load_recipe(None)) == evaluation_key(load_recipe(None, ["data.eval_size=10"]))
    False
    """
    names = [name.split(".", 1) for name in tagged_fields(EVALUATED)]  # the fields tagged in the schema
    dumps = {section: getattr(recipe, section).model_dump(mode="json") for section in {s for s, _ in names}}
    parts: dict = {}
    for section, key in names:
        parts.setdefault(section, {})[key] = dumps[section][key]
    parts["rewards"] = [r.model_dump(mode="json", exclude={"timeout"}) for r in recipe.rewards]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@dataclass
class EvalResult:
    metrics: dict[str, float]
    samples: list[dict] = field(default_factory=list)


def evaluation_record(recipe, result: EvalResult) -> dict:
    """What ``eval_<label>.json`` holds: the split, the fingerprint of what made it, metrics and samples."""
    return {"split": recipe.eval.split, "made_by": evaluation_key(recipe), "metrics": result.metrics,
            "samples": result.samples}  # fmt: skip


@dataclass
class Sampling:
    """How sampled evaluation draws: ``params.group_size`` (k) completions per problem, at the training
    temperature.

    Each chunk of problems has a generator seeded from ``seed`` and the chunk's place, the same for every
    evaluation, so before and after draw from the same uniform numbers: their difference comes from the model, less
    from the luck of the draw. The draw does not depend on which process samples the chunk either.
    """

    params: SamplingParams
    seed: int = 0

    @property
    def k(self) -> int:
        return self.params.group_size


def _generate_all(backend, prompt_ids, *, max_new_tokens, batch_size, bar, sampling=None, ranks=SINGLE):
    """Completions (texts), lengths and truncation flags for every prompt; ``sampling.k`` per prompt if sampled.

    With several processes each generates every ``world``-th chunk, and every process gets all the outputs in
    order. The chunks are those one process would generate, so the outputs are the same.
    """
    if sampling:
        params, per_chunk = sampling.params, max(1, batch_size // sampling.k)  # batch_size rows, as greedy
    else:
        params, per_chunk = SamplingParams(max_new_tokens, greedy=True), batch_size
    starts = range(0, len(prompt_ids), per_chunk)
    mine = {}
    for start in starts[ranks.rank :: ranks.world]:
        chunk = prompt_ids[start : start + per_chunk]
        generator = None
        if sampling:
            generator = torch.Generator(device=backend.device).manual_seed(sampling.seed * 1_000_003 + start)
        out = backend.generate(chunk, params, generator)
        texts = decode(backend.tokenizer, out.completion_ids, out.completion_mask)
        mine[start] = texts, out.completion_lengths.tolist(), out.truncated.tolist()
        bar.advance(len(chunk))
    outputs = {start: part for each in ranks.gather(mine) for start, part in each.items()}
    completions, lengths, truncated = [], [], []
    for start in starts:
        completions += outputs[start][0]
        lengths += outputs[start][1]
        truncated += outputs[start][2]
    return completions, lengths, truncated


def evaluate(
    backend: RolloutBackend,
    examples: list[Example],
    prompts: PromptBuilder,
    rewards: RewardSet,
    task: TaskMetrics,
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    label: str = "eval",
    sampling: Sampling | None = None,
    ranks: Ranks = SINGLE,
) -> EvalResult | None:
    """Greedy completions for every held-out example; accuracy, format accuracy, mean reward.

    With ``sampling``, also ``k`` sampled completions per example, summarised as mean@k, pass@j, maj@k and the
    share of examples whose samples are all wrong / all right (see :func:`thinktune.stats.sampled_metrics`).
    With several processes the generation is split between them and process 0 scores it; the others get None.
    """
    kept = prompts.fitting(examples)
    ids = [i for _, i in kept]
    with progress(label, total=len(kept)) as bar:
        completions, lengths, truncated = _generate_all(
            backend, ids, max_new_tokens=max_new_tokens, batch_size=batch_size, bar=bar, ranks=ranks
        )
    used, sampled = [e for e, _ in kept], None
    if sampling and any(e.answer for e in used):  # graded problems: sampled metrics
        with progress(f"{label}, {sampling.k} samples each", total=len(kept)) as bar:
            sampled, _, _ = _generate_all(backend, ids, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                          bar=bar, sampling=sampling, ranks=ranks)  # fmt: skip
    if not ranks.main:
        return None
    prompt_texts = [prompts.text(e.question) for e in used]
    scores = rewards.score(prompt_texts, completions, [e.columns() for e in used])
    accuracy = task.accuracy(completions, used)
    fmt = task.format_ok(completions)
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
    if sampled is not None:
        metrics.update(_summarise_samples(sampled, used, task, sampling.k, samples))
    return EvalResult(metrics, samples)


def _summarise_samples(completions: list[str], examples: list[Example], task, k: int, samples: list[dict]) -> dict:
    """Grade ``k`` completions per example (in order); record each example's count right; the sampled metrics."""
    repeated = [e for e in examples for _ in range(k)]
    correct = task.accuracy(completions, repeated)
    answers = [extract_answer(c, task.answer_format) for c in completions]
    counts, majority = [], []
    for i, sample in enumerate(samples):
        part = slice(i * k, (i + 1) * k)
        counts.append(int(sum(correct[part])))
        majority.append(majority_correct(answers[part], correct[part]))
        sample[f"correct_of_{k}"] = counts[-1]
    fmt = task.format_ok(completions)
    return {**sampled_metrics(counts, majority, k), f"format@{k}": sum(fmt) / len(fmt)}


def evaluate_recipe(backend, recipe, examples, rewards, task, label: str = "eval", ranks=SINGLE) -> EvalResult | None:
    """:func:`evaluate` with the recipe's prompts, completion budget, batch size and ``eval.samples`` (split over
    ``ranks``: None on all but process 0)."""
    budget = recipe.eval.max_new_tokens or recipe.grpo.max_new_tokens
    k = recipe.eval.samples
    sampling = Sampling(SamplingParams.of_recipe(recipe.grpo, k, budget), recipe.eval.seed) if k else None
    return evaluate(
        backend,
        examples,
        PromptBuilder.from_config(backend.tokenizer, recipe.data),
        rewards,
        task,
        max_new_tokens=budget,
        batch_size=recipe.eval.batch_size,
        label=label,
        sampling=sampling,
        ranks=ranks,
    )
