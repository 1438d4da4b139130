"""Loaders for the datasets the systems thinktune replaces trained on, each mapped to :class:`Example`.

Each reads a local file in the dataset's own schema (``data.path``: .jsonl/.json/.csv/.parquet) or, online,
the hub dataset (``data.hub_id``, defaulting to the dataset's usual id). A row that lacks a field the
loader needs stops the run with the column name and row index.

    data: {source: gsm8k, path: data/gsm8k_train.jsonl, eval_path: data/gsm8k_test.jsonl}
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from thinktune.data.types import DataError, Example
from thinktune.rewards.extract import last_boxed


class RowError(ValueError):
    """A row that cannot be converted; the loader adds the source and row index."""


def _field(row: dict, column: str) -> Any:
    if column not in row:
        raise RowError(f"has no column {column!r}; columns present: {sorted(row)}")
    value = row[column]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowError(f"has an empty {column!r}")
    return value


def gsm8k_example(row: dict) -> Example:
    """GSM8K: ``question``; ``answer`` is a worked solution ending in ``#### N``. The reference is N (commas
    dropped); the worked solution is kept as ``solution`` (for SFT).

    >>> gsm8k_example({"question": "2 + 3?", "answer": "2 + 3 = <<2+3=5>>5\\n#### 5"}).answer
    '5'
    """
    solution, marker, final = str(_field(row, "answer")).rpartition("####")
    if not marker or not final.strip():
        raise RowError("has an 'answer' without the final '#### N' line")
    extra = {"solution": solution.strip()}
    return Example(str(_field(row, "question")), final.strip().replace(",", ""), extra)


def cooking_example(row: dict) -> Example:
    """CoT_Reasoning_Cooking: ``question``, free-text ``answer``, ``metadata.reasoning`` kept as
    ``reasoning`` (for SFT and as the chosen side of preference pairs). ``metadata`` may be a JSON string."""
    metadata = _field(row, "metadata")
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError as err:
            raise RowError(f"has a 'metadata' that is not JSON: {err}") from None
    if not isinstance(metadata, dict):
        raise RowError(f"has a 'metadata' of type {type(metadata).__name__}, expected an object")
    reasoning = metadata.get("reasoning")
    if reasoning is None or not str(reasoning).strip():
        raise RowError("has no (or an empty) 'metadata.reasoning'")
    return Example(str(_field(row, "question")), str(_field(row, "answer")), {"reasoning": str(reasoning)})


def boxed_math_example(row: dict) -> Example:
    """open-R1 math / NuminaMath-TIR: ``problem``, worked ``solution``; the reference is the ``answer``
    column when present, else the last ``\\boxed{…}`` of the solution.

    >>> boxed_math_example({"problem": "1/2 + 1/2?", "solution": "It is $\\\\boxed{1}$."}).answer
    '1'
    """
    solution = str(_field(row, "solution"))
    answer = row.get("answer")
    if answer is None or not str(answer).strip():
        answer = last_boxed(solution)
        if answer is None:
            raise RowError("has no 'answer' column and no \\boxed{} answer in 'solution'")
    return Example(str(_field(row, "problem")), str(answer).strip(), {"solution": solution})


def tldr_example(row: dict) -> Example:
    """SmolTLDR: ``prompt`` (a post to summarise) and ``completion`` (a reference summary, the answer)."""
    return Example(str(_field(row, "prompt")), str(_field(row, "completion")))


def chat_example(row: dict) -> Example:
    """A conversation in ``messages`` (``role``/``content`` turns, as chat datasets store them): the last user
    turn is the question and the assistant turn after it the ``response`` (for SFT). The reference answer is the
    ``answer`` column when there is one, else that response. Earlier turns are not used.

    >>> chat = [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "It is 4."}]
    >>> example = chat_example({"messages": chat, "answer": "4"})
    >>> example.question, example.answer, example.extra["response"]
    ('2 + 2?', '4', 'It is 4.')
    """
    turns = _field(row, "messages")
    if not isinstance(turns, list) or not all(isinstance(t, dict) and {"role", "content"} <= t.keys() for t in turns):
        raise RowError("has a 'messages' that is not a list of {role, content} turns")
    users = [i for i, t in enumerate(turns) if t["role"] == "user"]
    if not users or users[-1] + 1 >= len(turns) or turns[users[-1] + 1]["role"] != "assistant":
        raise RowError("has no user turn followed by an assistant turn in 'messages'")
    question, response = str(turns[users[-1]]["content"]), str(turns[users[-1] + 1]["content"])
    answer = row.get("answer")
    answer = response if answer is None or not str(answer).strip() else str(answer).strip()
    return Example(question, answer, {"response": response})


@dataclass(frozen=True)
class NamedDataset:
    hub_id: str
    hub_config: str | None
    train_split: str
    eval_split: str | None
    convert: Callable[[dict], Example]


NAMED: dict[str, NamedDataset] = {
    "gsm8k": NamedDataset("openai/gsm8k", "main", "train", "test", gsm8k_example),
    "cooking_cot": NamedDataset("moremilk/CoT_Reasoning_Cooking", None, "train", None, cooking_example),
    "openr1_math": NamedDataset("open-r1/OpenR1-Math-220k", "default", "train", None, boxed_math_example),
    "numina_tir": NamedDataset("AI-MO/NuminaMath-TIR", None, "train", "test", boxed_math_example),
    "smoltldr": NamedDataset("mlabonne/smoltldr", None, "train", "validation", tldr_example),
}


def convert_rows(rows: list[dict], convert: Callable[[dict], Example], source: str) -> list[Example]:
    """Every row through ``convert``; the first bad one stops with its index and what is wrong."""
    if not rows:
        raise DataError(f"{source}: the dataset is empty")
    examples = []
    for index, row in enumerate(rows):
        try:
            examples.append(convert(row))
        except RowError as err:
            raise DataError(f"{source}: row {index} {err}") from None
    return examples


def hub_rows(hub_id: str, config: str | None, split: str) -> list[dict]:
    """A hub dataset split (online only), with an error that says what to do offline."""
    from datasets import load_dataset

    try:
        return list(load_dataset(hub_id, config, split=split))
    except Exception as err:
        raise DataError(
            f"data: cannot load {hub_id!r} split {split!r} from the hub ({type(err).__name__}: {str(err)[:200]}); "
            f"offline, download it and set data.path (and data.eval_path) to the local files"
        ) from None
