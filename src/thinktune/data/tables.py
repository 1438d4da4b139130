"""Tables on disk (.jsonl, .json, .csv, .parquet) read into rows, and rows mapped to :class:`Example`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thinktune.data.types import DataError, Example


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
