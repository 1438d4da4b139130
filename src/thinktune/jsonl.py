"""JSON Lines files: one record per line, appended as it is made."""

from __future__ import annotations

import json
import math
from pathlib import Path

from thinktune.outputs import writing


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlWriter:
    """Appends records to ``path`` (created with its folder); non-finite floats are written as null."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        with writing(self.path), self.path.open("a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """Every complete record of ``path`` ([] if there is none). A last line cut short (the process was killed
    while writing it) is left out; a bad line elsewhere is an error naming the file and line."""
    path = Path(path)
    return _records(path.read_text(), path) if path.is_file() else []


def _records(text: str, path: Path) -> list[dict]:
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # unfinished: written again when its step runs again
    records = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {number} is not JSON ({err.msg})") from None
    return records


def rewrite_jsonl(path: Path, records: list[dict]) -> None:
    """Replace ``path`` with ``records``, atomically (a temporary file renamed over it)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with writing(path):
        partial.write_text("".join(json.dumps(r) + "\n" for r in records))
        partial.replace(path)


def keep_records(path: Path, keep) -> list[dict]:
    r"""Drop from ``path`` the records for which ``keep(record)`` is false, and a last line cut short; return the
    records kept. Resuming a run uses it to forget what was logged after the checkpoint it resumes from.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "m.jsonl"
    >>> _ = path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"st')
    >>> keep_records(path, lambda r: r["step"] <= 2), path.read_text()
    ([{'step': 1}, {'step': 2}], '{"step": 1}\n{"step": 2}\n')
    """
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text()
    records = _records(text, path)
    kept = [r for r in records if keep(r)]
    if kept != records or (text and not text.endswith("\n")):
        rewrite_jsonl(path, kept)
    return kept
