"""The data sources a recipe can name (``data.source``), each turning the data section into example splits.

A source is registered once, in :data:`SOURCES`, with the source-specific fields it reads; the recipe is checked
against that entry when it loads, so a field the source ignores (``task`` for a file) is an error naming the key.
Every example carries ``question`` and ``answer`` plus its other columns, which reward functions receive as
keyword arguments (TRL-compatible: ``fn(prompts, completions, answer=[...], metadata=[...])``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import yaml

from thinktune.console import console
from thinktune.data.gym import reasoning_gym_splits
from thinktune.data.named import NAMED, chat_example, convert_rows, hub_rows
from thinktune.data.passages import passage_splits
from thinktune.data.tables import read_table, rows_to_examples
from thinktune.data.types import DataError, Example
from thinktune.registry import Registry

Splits = tuple[list[Example], list[Example], list[Example], Any]  # train, held-out, validation, task scorer
SPECIFIC_FIELDS = ("task", "task_config", "path", "eval_path", "columns", "hub_id")


@dataclass(frozen=True)
class Source:
    """How a source makes its splits, and which of :data:`SPECIFIC_FIELDS` it reads (and cannot do without)."""

    splits: Callable[[Any], Splits]
    uses: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()


def _carve(train: list[Example], size: int, source: str) -> tuple[list[Example], list[Example]]:
    """The last ``size`` training examples as a validation set."""
    if size and size >= len(train):
        raise DataError(f"{source}: {len(train)} training examples cannot give data.validation_size={size}")
    return train[: len(train) - size], train[len(train) - size :]


def _hold_out(train: list[Example], held_out: list[Example] | None, cfg) -> Splits:
    """Training, held-out and validation sets of a table source: without a held-out file the last
    ``eval_size`` rows are held out, and the validation set is the last ``validation_size`` before them."""
    if held_out is None:
        if cfg.eval_size >= len(train):
            raise DataError(
                f"{cfg.path or cfg.source}: {len(train)} rows cannot hold out data.eval_size={cfg.eval_size}; "
                f"lower eval_size or give data.eval_path"
            )
        train, held_out = train[: len(train) - cfg.eval_size], train[len(train) - cfg.eval_size :]
    if not train:
        raise DataError("data: no training examples left")
    train, validation = _carve(train, cfg.validation_size, cfg.path or cfg.source)
    seen = {e.question.strip() for e in train}
    held_out = _without(held_out, seen, "held-out", cfg.eval_path or cfg.path or cfg.source)
    validation = _without(validation, seen | {e.question.strip() for e in held_out}, "validation", cfg.path)
    return train, held_out, validation, None


def _without(examples: list[Example], seen: set[str], split: str, source) -> list[Example]:
    """``examples`` less those whose question is in ``seen`` (training's, or an earlier split's), counted: a set
    graded on questions the model trained on would measure recall, not reasoning."""
    kept = [e for e in examples if e.question.strip() not in seen]
    if len(kept) < len(examples):
        dropped = len(examples) - len(kept)
        if not kept:
            raise DataError(
                f"{source}: every one of the {dropped} {split} questions also occurs in training; give "
                f"data.eval_path a file of other questions"
            )
        console.print(
            f"[yellow]{split}: {dropped} of {len(examples)} questions also occur in training (or an earlier "
            f"split) and were dropped; {len(kept)} left[/]"
        )
    return kept


def _file_splits(cfg, read: Callable[[str], list[Example]]) -> Splits:
    held_out = read(cfg.eval_path)[: cfg.eval_size] if cfg.eval_path else None
    return _hold_out(read(cfg.path), held_out, cfg)


def file_splits(cfg) -> Splits:
    """Rows of ``data.path`` (and ``data.eval_path``) mapped by ``data.columns``."""
    return _file_splits(cfg, lambda path: rows_to_examples(read_table(path), cfg.columns, path))


def chat_splits(cfg) -> Splits:
    """Conversations (a ``messages`` column): the last user turn asks, the assistant turn after it answers."""
    return _file_splits(cfg, lambda path: convert_rows(read_table(path), chat_example, path))


def named_splits(name: str, cfg) -> Splits:
    """A named dataset in its own schema: from ``data.path`` (and ``data.eval_path``) or, online, its hub splits."""
    named = NAMED[name]

    def from_file(path):
        return convert_rows(read_table(path), named.convert, path)

    def from_hub(split):
        hub_id = cfg.hub_id or named.hub_id
        return convert_rows(hub_rows(hub_id, named.hub_config, split), named.convert, f"{hub_id}[{split}]")

    train = from_file(cfg.path) if cfg.path else from_hub(named.train_split)
    held_out = None
    if cfg.eval_path:
        held_out = from_file(cfg.eval_path)[: cfg.eval_size]
    elif not cfg.path and named.eval_split:
        held_out = from_hub(named.eval_split)[: cfg.eval_size]
    return _hold_out(train, held_out, cfg)


def passages(cfg) -> Splits:
    """Story passages to summarise; validation from the end of the training passages."""
    train, held_out, scorer = passage_splits(cfg)
    train, validation = _carve(train, cfg.validation_size, cfg.source)
    return train, held_out, validation, scorer


SOURCES = Registry(
    "data.source",
    {
        "reasoning_gym": Source(reasoning_gym_splits, uses=("task", "task_config"), requires=("task",)),
        "file": Source(file_splits, uses=("path", "eval_path", "columns"), requires=("path",)),
        "chat": Source(chat_splits, uses=("path", "eval_path"), requires=("path",)),
        "passages": Source(passages),
        **{name: Source(partial(named_splits, name), uses=("path", "eval_path", "hub_id")) for name in NAMED},
    },
)


def source_errors(cfg) -> list[str]:
    """What is wrong with a data section for its source: an unknown source, a required field missing, or a
    source-specific field set (to other than its default) that the source would ignore.

    >>> from thinktune.config import DataConfig
    >>> for error in source_errors(DataConfig(source="file", task="x")):
    ...     print(error)
    data.path: required when data.source is file
    data.task: not used by data.source file (it reads path, eval_path, columns); clear it with data.task=null
    """
    source = SOURCES.get(cfg.source)
    if source is None:
        return [SOURCES.unknown(cfg.source)]
    errors = [
        f"data.{key}: required when data.source is {cfg.source}" for key in source.requires if not getattr(cfg, key)
    ]
    for key in foreign_fields(cfg):
        reads = (
            f"it reads {', '.join(source.uses)}" if source.uses else "it reads none of " + ", ".join(SPECIFIC_FIELDS)
        )
        errors.append(f"data.{key}: not used by data.source {cfg.source} ({reads}); clear it with {clearing(key)}")
    return errors


def foreign_fields(cfg) -> list[str]:
    """The source-specific fields set (to other than their default) that ``cfg.source`` does not read."""
    uses = SOURCES[cfg.source].uses
    return [key for key in SPECIFIC_FIELDS if key not in uses and getattr(cfg, key) != _default(type(cfg), key)]


def _default(section: type, key: str):
    return section.model_fields[key].get_default(call_default_factory=True)


def clearing(key: str) -> str:
    """The command-line override that puts ``data.<key>`` back to its default, quoted for a shell.

    >>> clearing("task"), clearing("task_config")
    ('data.task=null', "'data.task_config={}'")
    """
    from thinktune.config import DataConfig

    value = (
        yaml.safe_dump(_default(DataConfig, key), default_flow_style=True, sort_keys=False)
        .strip()
        .removesuffix("\n...")
        .strip()
    )
    override = f"data.{key}={value}"
    return override if re.fullmatch(r"[\w.=-]+", override) else f"'{override}'"


def load_examples(cfg, split: str = "held_out") -> tuple[list[Example], list[Example], Any]:
    """Return (train, evaluation set, reasoning-gym dataset or None) as the recipe's data section says.

    The evaluation set is the held-out one, or with ``split="validation"`` the validation one. Either way the
    training set excludes both, so choosing settings on validation trains on exactly what the final run trains on.
    """
    train, held_out, validation, scorer = SOURCES[cfg.source].splits(cfg)
    return train, validation if split == "validation" else held_out, scorer
