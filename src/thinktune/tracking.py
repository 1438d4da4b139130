"""Metric sinks (metrics.jsonl, samples.jsonl) and console progress."""

from __future__ import annotations

import contextlib
import json
import math
import resource
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB (10^9 bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9  # macOS reports bytes, Linux KiB


@contextlib.contextmanager
def progress(label: str, total: int):
    """A rich progress bar; ``bar.advance(n)`` and ``bar.show(text)`` update it."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )

    class Handle:
        def advance(self, n: int = 1) -> None:
            bar.advance(task, n)

        def show(self, info: str) -> None:
            bar.update(task, info=info)

    with bar:
        task = bar.add_task(label, total=total, info="")
        yield Handle()


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlWriter:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def comparison_table(before: dict, after: dict, keys: list[str], title: str = "held-out evaluation") -> Table:
    table = Table(title=title)
    for column in ("metric", "before", "after", "change"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    for key in keys:
        b, a = before.get(key), after.get(key)
        if b is None or a is None:
            continue
        table.add_row(key, f"{b:.3f}", f"{a:.3f}", f"{a - b:+.3f}")
    return table


def comparison_markdown(before: dict, after: dict, keys: list[str]) -> str:
    lines = ["| metric | before | after | change |", "|---|---:|---:|---:|"]
    for key in keys:
        b, a = before.get(key), after.get(key)
        if b is not None and a is not None:
            lines.append(f"| {key} | {b:.3f} | {a:.3f} | {a - b:+.3f} |")
    return "\n".join(lines) + "\n"
