"""What every data source produces: :class:`Example`; and how a bad dataset is reported: :class:`DataError`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EVAL_SEED_OFFSET = 1_000_003  # generated held-out sets use seed + this, validation seed + twice this


class DataError(ValueError):
    """A dataset that cannot be used, with the file, column and row at fault."""


@dataclass
class Example:
    """One problem: the question, its reference answer ('' when there is none) and the dataset's other columns.

    >>> Example("2 + 2?", "4", {"metadata": {"terms": 2}}).columns()
    {'question': '2 + 2?', 'answer': '4', 'metadata': {'terms': 2}}
    """

    question: str
    answer: str
    extra: dict[str, Any] = field(default_factory=dict)

    def columns(self) -> dict[str, Any]:
        """Columns passed to reward functions."""
        return {"question": self.question, "answer": self.answer, **self.extra}
