"""reasoning-gym tasks as a data source: generated training, held-out and validation sets from three seeds.

data: {source: reasoning_gym, task: basic_arithmetic, task_config: {min_terms: 3, max_terms: 3}}
"""

from __future__ import annotations

import json
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
    train, _ = _gym_examples(cfg.task, cfg.train_size, cfg.seed, cfg.task_config)
    seen = held_questions | {e.question for e in validation}
    train = [e for e in train if e.question not in seen]
    return train, held_out, validation, GymTask(cfg.task, cfg.task_config)


class GymTask:
    """A reasoning-gym task's scorer, run in the bounded grader process: the task is rebuilt there from its name
    and config, so a scorer that parses model output (some call ``sympy``) cannot hang or crash training."""

    def __init__(self, name: str, config: dict):
        self.name, self.config = name, dict(config)

    def score_answer(self, answer: str | None, entry: dict) -> float:
        """The task's own score of ``answer`` for ``entry`` (question, answer, metadata); 0 when the scorer
        times out or fails (counted by the grader)."""
        from thinktune.rewards.guard import GRADER

        return GRADER.call(score_in_grader, self.name, json.dumps(self.config, sort_keys=True), answer, entry,
                           default=0.0)  # fmt: skip


_TASKS: dict[tuple[str, str], Any] = {}  # in the grader process: one dataset object per task and config


def score_in_grader(name: str, config_json: str, answer: str | None, entry: dict) -> float:
    """Score with the task rebuilt from its name and config (once per process)."""
    key = (name, config_json)
    if key not in _TASKS:
        import reasoning_gym

        _TASKS[key] = reasoning_gym.create_dataset(name, size=1, seed=0, **json.loads(config_json))
    return float(_TASKS[key].score_answer(answer=answer, entry=entry))
