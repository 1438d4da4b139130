"""Tables on disk (.jsonl, .json, .csv, .parquet) read into rows, and rows mapped to :class:`Example`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from thinktune.data.types import DataError, Example


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl/.json/.csv/.parquet file (no hub involved). JSON is read by thinktune itself, a line at a
    time, so every value keeps the type it has in the file and a bad line is named by its number; CSV and
    Parquet go through `datasets`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    kinds = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
    kind = kinds.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(kinds)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    if path.suffix.lower() == ".jsonl":
        rows = read_json_lines(path)
    elif kind == "json":
        rows = read_json_file(path)
    else:
        rows = _read_with_datasets(path, kind)
    if not rows:
        raise DataError(f"{path}: the file is empty (it holds no rows)")
    return rows


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """One JSON object a line; blank lines skipped. Memory stays near the rows' own size: the file is read a line
    at a time.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "t.jsonl"
    >>> _ = p.write_bytes(b'{"answer": 9}\\n{"answer": 9.5}\\n')
    >>> [row["answer"] for row in read_json_lines(p)]
    [9, 9.5]
    >>> _ = p.write_bytes(b'{"answer": 9}\\n{"answer": "\\xff"}\\n')
    >>> try:
    ...     read_json_lines(p)
    ... except DataError as err:
    ...     print(str(err).partition(": ")[2])
    line 2 is not UTF-8 text (byte 26 of the file)
    """
    rows, offset = [], 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}: line {number} is not UTF-8 text (byte {offset + err.start} of the file)"
                ) from None
            offset += len(raw)
            if line.strip():
                rows.append(_json_object(line.rstrip("\r\n"), path, f"line {number}"))
    return rows


def read_json_file(path: Path) -> list[dict[str, Any]]:
    """A JSON array of objects, or an object of equal-length columns."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not UTF-8 text (byte {err.start} of the file)") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: line {err.lineno} is not JSON ({err.msg}, column {err.colno})") from None
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        lengths = {len(v) for v in value.values()}
        if len(lengths) != 1:
            raise DataError(f"{path}: the columns have different lengths ({sorted(lengths)})")
        value = [dict(zip(value, row, strict=True)) for row in zip(*value.values(), strict=True)]
    if not isinstance(value, list):
        raise DataError(f"{path}: expected an array of objects (or an object of columns), got {type(value).__name__}")
    for index, row in enumerate(value):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {index} is {type(row).__name__}, expected an object")
    return value


def _json_object(text: str, path: Path, where: str) -> dict[str, Any]:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: {where} is not JSON ({err.msg}, column {err.colno})") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}: {where} is {type(row).__name__}, expected an object")
    return row


def _read_with_datasets(path: Path, kind: str) -> list[dict[str, Any]]:
    from datasets import load_dataset

    try:
        table = load_dataset(kind, data_files=str(path), split="train")
    except Exception as err:
        if "corresponds to no data" in str(err):  # how `datasets` reports a file without rows
            raise DataError(f"{path}: the file is empty (it holds no rows)") from None
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: cannot be read as {kind}: {reason}") from None
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
            value = row[column]
            if value is None or (field_name == "question" and isinstance(value, str) and not value.strip()):
                raise DataError(f"{source}: row {index} has an empty {column!r} (mapped to {field_name})")
        mapped = set(columns.values())
        extra = {k: v for k, v in row.items() if k not in mapped}
        extra.update({f: row[c] for f, c in columns.items() if f not in ("question", "answer")})
        examples.append(
            Example(question=str(row[columns["question"]]), answer=str(row[columns["answer"]]), extra=extra)
        )
    return examples
