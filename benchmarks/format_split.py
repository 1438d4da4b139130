"""Accuracy with the format taken out: `python benchmarks/format_split.py RUN_DIR [RUN_DIR ...]`.

A gain in accuracy can come from answers becoming right or from answers becoming readable. For each run's
evaluations before and after training this prints accuracy overall, among completions in the strict format, among
the others, and the share in the strict format, from the graded completions in eval_before.json / eval_after.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def split(samples: list[dict]) -> dict[str, float]:
    formatted = [s for s in samples if s["format"]]
    loose = [s for s in samples if not s["format"]]

    def accuracy(rows):
        return sum(s["correct"] for s in rows) / len(rows) if rows else float("nan")

    return {
        "accuracy": accuracy(samples),
        "formatted share": len(formatted) / len(samples),
        "accuracy | formatted": accuracy(formatted),
        "accuracy | not formatted": accuracy(loose),
    }


def main(folders: list[str]) -> None:
    for folder in map(Path, folders):
        print(f"{folder}")
        for label in ("before", "after"):
            path = folder / f"eval_{label}.json"
            if path.is_file():
                figures = split(json.loads(path.read_text())["samples"])
                print(f"  {label:6} " + "  ".join(f"{k} {v:.3f}" for k, v in figures.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
