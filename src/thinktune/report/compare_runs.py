"""`thinktune compare RUN_DIR RUN_DIR ...`: the runs' curves overlaid and their before/after tables side by side,
as one HTML page (what a user looks at after a sweep)."""

from __future__ import annotations

from html import escape
from pathlib import Path

from thinktune.before_after import significance_notes
from thinktune.report.html import figures, number, page, table
from thinktune.report.plots import Chart, Line, held_out_line, svg
from thinktune.report.run_data import RunRecord
from thinktune.report.run_report import TRAINING_CHARTS

OVERLAID = [("Total reward", "reward", False)] + [(title, keys[0], unit) for title, keys, unit in TRAINING_CHARTS]


def labels(runs: list[RunRecord]) -> list[str]:
    """Short names that tell the runs apart: the folder names, with their parents when those repeat.

    >>> from types import SimpleNamespace as Run
    >>> labels([Run(path=Path("sweep/a/seed0")), Run(path=Path("sweep/b/seed0"))])
    ['a/seed0', 'b/seed0']
    >>> labels([Run(path=Path("runs/seed0")), Run(path=Path("runs/seed1"))])
    ['seed0', 'seed1']
    """
    names = [run.path.name for run in runs]
    if len(set(names)) == len(names):
        return names
    return [f"{run.path.parent.name}/{run.path.name}" for run in runs]


def final_table(runs: list[RunRecord], names: list[str]) -> str:
    """Per run: each metric before → after, and the sign test's p for the 0/1 metrics."""
    keys = ["accuracy", "format_accuracy", "reward", "completion_length", "truncation_rate"]
    rows = []
    for key in keys:
        row = [escape(key)]
        for run in runs:
            if not (run.before and run.after and key in run.after["metrics"]):
                row.append("–")
                continue
            b, a = run.before["metrics"].get(key), run.after["metrics"][key]
            row.append(f"{number(b)} → <b>{number(a)}</b>")
        rows.append(row)
    p_row = ["sign test (accuracy)"]
    for run in runs:
        tests = significance_notes(run.before, run.after)[1] if run.before and run.after else {}
        test = tests.get("accuracy")
        p_row.append(f"{test['fixed']} fixed / {test['broken']} broken, p = {test['p_value']:.2g}" if test else "–")
    rows.append(p_row)
    steps = ["GRPO steps"] + [str(run.steps[-1]["step"]) if run.steps else "–" for run in runs]
    minutes = ["training minutes"] + [
        f"{run.summary['seconds'] / 60:.1f}" if run.summary and run.summary.get("seconds") else "–" for run in runs
    ]
    return table(["metric", *map(escape, names)], [*rows, steps, minutes])


def render(runs: list[RunRecord]) -> str:
    names = labels(runs)
    charts = [
        Chart(
            "Held-out accuracy by step (95% intervals)",
            [held_out_line(n, r.curve, "accuracy") for n, r in zip(names, runs, strict=True)],
            unit_interval=True,
        )
    ]
    for title, key, unit in OVERLAID:
        charts.append(
            Chart(title, [Line(n, *r.series(key)) for n, r in zip(names, runs, strict=True)], unit_interval=unit)
        )
    body = [
        f"<h1>{len(runs)} runs compared</h1>",
        '<p class="sub">' + " · ".join(escape(str(r.path)) for r in runs) + "</p>",
        "<h2>Before and after</h2>",
        final_table(runs, names),
        "<h2>Curves</h2>",
        figures([svg(c) for c in charts if not (c.empty or c.flat)]),
    ]
    return page("thinktune comparison", "\n".join(body))


def write_comparison(run_dirs: list[str | Path], out: str | Path) -> Path:
    runs = [RunRecord.read(path) for path in run_dirs]
    out = Path(out)
    out.write_text(render(runs))
    return out
