"""reasoning-gym tasks as a data source: generated training, held-out and validation sets from three seeds.

data: {source: reasoning_gym, task: basic_arithmetic, task_config: {min_terms: 3, max_terms: 3}}
"""

from __future__ import annotations

from typing import Any

from thinktune.data.types import EVAL_SEED_OFFSET, DataError, Example


def _gym_examples(task: str, size: int, seed: int, task_config: dict) -> tuple[list[Example], Any]:
    import reasoning_gym

    try:
        dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **task_config)
    except Exception as err:  # reasoning-gym raises KeyError/TypeError/ValueError for bad names and configs
        known = ", ".join(sorted(reasoning_gym.factory.DATASETS)[:12])
        if task not in reasoning_gym.factory.DATASETS:
            raise DataError(f"data.task: unknown reasoning-gym task {task!r} (e.g. {known}, …)") from None
        raise DataError(f"data.task_config for {task!r} is invalid: {err}") from None
    rows = [
        Example(question=row["question"], answer=str(row["answer"]), extra={"metadata": row["metadata"]})
        for row in dataset
    ]
    return rows, dataset


def _distinct(examples: list[Example], size: int, exclude: set[str]) -> list[Example]:
    """The first ``size`` examples whose question is new (not in ``exclude``, not seen before in the list)."""
    seen, out = set(exclude), []
    for e in examples:
        if e.question not in seen and len(out) < size:
            seen.add(e.question)
            out.append(e)
    return out


def reasoning_gym_splits(cfg) -> tuple[list[Example], list[Example], list[Example], Any]:
    """Train, held-out and validation sets from three seeds, with no question in two splits.

    Evaluation sets hold distinct questions (a small task repeats some: counted once, more are drawn); validation
    drops held-out questions, and training drops questions of either.
    """

    def distinct_set(size: int, seed: int, exclude: set[str]) -> list[Example]:
        drawn, _ = _gym_examples(cfg.task, 2 * size + 100, seed, cfg.task_config)
        return _distinct(drawn, size, exclude)

    held_out = distinct_set(cfg.eval_size, cfg.seed + EVAL_SEED_OFFSET, set()) if cfg.eval_size else []
    held_questions = {e.question for e in held_out}
    validation = []
    if cfg.validation_size:
        validation = distinct_set(cfg.validation_size, cfg.seed + 2 * EVAL_SEED_OFFSET, held_questions)
    train, scorer = _gym_examples(cfg.task, cfg.train_size, cfg.seed, cfg.task_config)
    seen = held_questions | {e.question for e in validation}
    train = [e for e in train if e.question not in seen]
    return train, held_out, validation, scorer
