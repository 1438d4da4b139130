"""The reasoning-gym task's own scorer as a reward."""

from __future__ import annotations

from thinktune.rewards.extract import extract_answer
from thinktune.rewards.registry import register_reward


@register_reward("task_score", needs_source="reasoning_gym")
def task_score_reward(
    prompts, completions, answer, metadata=None, question=None, task_dataset=None, answer_format="xml", **_
) -> list[float | None]:
    """The reasoning-gym task's own scorer (0..1, partial credit where the task gives it) on the answer.

    Needs a reasoning-gym data source; ``None`` (not applicable) for rows without task metadata.
    For basic_arithmetic, reference "-4": answer "-4" scores 1.0, "4" scores 0.0.
    """
    if task_dataset is None:
        raise ValueError("task_score needs data.source=reasoning_gym")
    scores: list[float | None] = []
    for i, completion in enumerate(completions):
        if metadata is None or metadata[i] is None:
            scores.append(None)
            continue
        entry = {"question": question[i] if question else "", "answer": answer[i], "metadata": metadata[i]}
        extracted = extract_answer(completion, answer_format)
        scores.append(float(task_dataset.score_answer(answer=extracted, entry=entry)))
    return scores
