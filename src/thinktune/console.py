"""What a person watching the terminal sees: the console, progress bars, memory use."""

from __future__ import annotations

import contextlib
import resource
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

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
