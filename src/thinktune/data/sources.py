"""Task sources: reasoning-gym generators and local files, as lists of :class:`Example`.

Every example carries ``question`` and ``answer`` plus its other columns, which reward functions receive
as keyword arguments (TRL-compatible: ``fn(prompts, completions, answer=[...], metadata=[...])``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinktune.config import DataConfig

EVAL_SEED_OFFSET = 1_000_003


class DataError(ValueError):
    """A dataset that cannot be used, with the file, column and row at fault."""


@dataclass
class Example:
    question: str
    answer: str
    extra: dict[str, Any] = field(default_factory=dict)

    def columns(self) -> dict[str, Any]:
        """Columns passed to reward functions."""
        return {"question": self.question, "answer": self.answer, **self.extra}


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


def reasoning_gym_splits(cfg: DataConfig) -> tuple[list[Example], list[Example], list[Example], Any]:
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


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl/.json/.csv/.parquet file through `datasets` (no hub involved)."""
    from datasets import load_dataset

    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    kinds = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
    kind = kinds.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(kinds)}")
    try:
        table = load_dataset(kind, data_files=str(path), split="train")
    except Exception as err:
        if "corresponds to no data" in str(err):  # how `datasets` reports a file without rows
            raise DataError(f"{path}: the dataset is empty") from None
        raise DataError(f"{path}: cannot be read as {kind}: {err}") from None
    return list(table)


def rows_to_examples(rows: list[dict], columns: dict[str, str], source: str) -> list[Example]:
    if not rows:
        raise DataError(f"{source}: the dataset is empty")
    for field_name in ("question", "answer"):
        if field_name not in columns:
            raise DataError(f"data.columns: missing the mapping for {field_name!r}")
    examples = []
    for index, row in enumerate(rows):
        for field_name, column in columns.items():
            if column not in row:
                raise DataError(
                    f"{source}: row {index} has no column {column!r} (mapped to {field_name}); "
                    f"columns present: {sorted(row)}"
                )
            if row[column] is None:
                raise DataError(f"{source}: row {index} has an empty {column!r} (mapped to {field_name})")
        mapped = set(columns.values())
        extra = {k: v for k, v in row.items() if k not in mapped}
        extra.update({f: row[c] for f, c in columns.items() if f not in ("question", "answer")})
        examples.append(
            Example(question=str(row[columns["question"]]), answer=str(row[columns["answer"]]), extra=extra)
        )
    return examples


def load_examples(cfg: DataConfig, split: str = "held_out") -> tuple[list[Example], list[Example], Any]:
    """Return (train, evaluation set, reasoning-gym dataset or None) as the recipe's data section says.

    The evaluation set is the held-out one, or with ``split="validation"`` the validation one. Either way the
    training set excludes both, so choosing settings on validation trains on exactly what the final run trains on.
    """
    if cfg.source == "reasoning_gym":
        train, held_out, validation, scorer = reasoning_gym_splits(cfg)
    else:
        train, held_out, scorer = _other_splits(cfg)
        train, validation = _carve(train, cfg.validation_size, cfg.path or cfg.source)
    return train, validation if split == "validation" else held_out, scorer


def _carve(train: list[Example], size: int, source: str) -> tuple[list[Example], list[Example]]:
    """The last ``size`` training examples as a validation set."""
    if size and size >= len(train):
        raise DataError(f"{source}: {len(train)} training examples cannot give data.validation_size={size}")
    return train[: len(train) - size], train[len(train) - size :]


def _other_splits(cfg: DataConfig) -> tuple[list[Example], list[Example], Any]:
    if cfg.source == "passages":
        from thinktune.data.passages import passage_splits

        return passage_splits(cfg)
    train = _table_examples(cfg, cfg.path, "train")
    held_out = None
    if cfg.eval_path:
        held_out = _table_examples(cfg, cfg.eval_path, "eval")[: cfg.eval_size]
    elif cfg.source != "file" and not cfg.path and named_dataset(cfg.source).eval_split:
        held_out = _table_examples(cfg, None, "eval")[: cfg.eval_size]
    if held_out is None:
        if cfg.eval_size >= len(train):
            raise DataError(
                f"{cfg.path or cfg.source}: {len(train)} rows cannot hold out data.eval_size={cfg.eval_size}; "
                f"lower eval_size or give data.eval_path"
            )
        train, held_out = train[: len(train) - cfg.eval_size], train[len(train) - cfg.eval_size :]
    if not train:
        raise DataError("data: no training examples left")
    return train, held_out, None


def named_dataset(name: str):
    from thinktune.data.named import NAMED

    return NAMED[name]


def _table_examples(cfg: DataConfig, path: str | None, split: str) -> list[Example]:
    """Examples of a file (or, for a named dataset without a file, its hub split)."""
    if cfg.source == "file":
        return rows_to_examples(read_table(path), cfg.columns, path)
    from thinktune.data.named import chat_example, convert_rows, hub_rows

    if cfg.source == "chat":
        return convert_rows(read_table(path), chat_example, path)

    named = named_dataset(cfg.source)
    if path:
        return convert_rows(read_table(path), named.convert, path)
    hub_id = cfg.hub_id or named.hub_id
    hub_split = named.train_split if split == "train" else named.eval_split
    return convert_rows(hub_rows(hub_id, named.hub_config, hub_split), named.convert, f"{hub_id}[{hub_split}]")
