"""`thinktune report RUN_DIR`: the run on one page — curves, the held-out curve and before/after table with
their statistics, before and after completions side by side, the recipe and where it ran."""

from __future__ import annotations

from html import escape
from pathlib import Path

from thinktune.before_after import compared, significance_notes, split_name
from thinktune.report.html import figures, number, page, table
from thinktune.report.plots import Chart, Line, held_out_line, svg
from thinktune.report.run_data import RunRecord

# Training curves: (title, metric keys, y from 0 to 1). Reward functions are added per run.
TRAINING_CHARTS = [
    ("Accuracy and format of the training samples", ["accuracy", "format"], True),
    ("Completion length (tokens)", ["completion_length", "completion_length_max"], False),
    ("Truncated completions", ["truncation_rate"], True),
    ("KL to the reference", ["kl"], False),
    ("Entropy of the policy", ["entropy"], False),
    ("Clipped tokens", ["clip_fraction"], False),
    ("Gradient norm (before clipping)", ["grad_norm"], False),
    ("Learning rate", ["lr"], False),
    ("Groups with no spread (no signal)", ["zero_std_groups"], True),
    ("Seconds per phase", ["seconds_rollout", "seconds_score", "seconds_update"], False),
    ("Throughput (tokens/s)", ["tokens_per_s", "generated_tokens_per_s"], False),
]
SHOWN_COMPLETIONS = 30  # of each kind: fixed, broken, unchanged


def reward_chart(run: RunRecord) -> Chart:
    """Total reward and each reward function: the step's mean with a band of ± one std over its completions."""
    chart = Chart("Reward (mean ± std over the step's completions)")
    for key, label in [("reward", "total"), *((f"reward/{f}", f) for f in run.reward_functions())]:
        steps, values = run.series(key)
        band = [r.get(f"{key}_std") or 0.0 for r in run.steps if isinstance(r.get(key), int | float)]
        chart.lines.append(Line(label, steps, values, band=band))
    return chart


def training_charts(run: RunRecord) -> tuple[list[Chart], list[str]]:
    """The charts worth drawing, and one line each for curves that stayed flat (KL with no KL term, a constant
    learning rate): a flat line in a box says less than "0 throughout"."""
    charts, constant = [reward_chart(run)], []
    for title, keys, unit in TRAINING_CHARTS:
        lines = [Line(key if len(keys) > 1 else "", *run.series(key)) for key in keys]
        chart = Chart(title, [line for line in lines if line.values], unit_interval=unit)
        if chart.flat:
            constant.append(f"{title}: {chart.lines[0].values[0]:.4g} at every step")
        else:
            charts.append(chart)
    return [chart for chart in charts if not chart.empty], constant


def training_section(run: RunRecord) -> str:
    if not run.steps:
        return '<p class="note">No GRPO steps logged.</p>'
    charts, constant = training_charts(run)
    flat = f'<p class="note">Constant: {escape("; ".join(constant))}.</p>' if constant else ""
    note = (
        '<p class="note">Faint: every step; bold: the moving average over a twentieth of the run; shaded: the '
        "moving average of mean ± std over the step's completions.</p>"
    )
    return note + figures([svg(chart) for chart in charts]) + flat


def held_out_chart(run: RunRecord) -> Chart:
    split = split_name(run.after or run.before or {})
    lines = [held_out_line(key, run.curve, key) for key in ("accuracy", "format_accuracy")]
    return Chart(f"{split.capitalize()} accuracy by step (95% intervals)", [ln for ln in lines if ln.values], "", True)


def headline(run: RunRecord) -> str:
    cards = []
    if run.before and run.after:
        for key in ("accuracy", "format_accuracy"):
            if key in run.after["metrics"]:
                b, a = run.before["metrics"][key], run.after["metrics"][key]
                cards.append((f"{b:.3f} → {a:.3f}", f"{key.replace('_', ' ')} ({a - b:+.3f})"))
    if run.steps:
        cards.append((str(run.steps[-1]["step"]), "GRPO steps"))
    if run.summary and run.summary.get("seconds"):
        cards.append((f"{run.summary['seconds'] / 60:.1f} min", "training time"))
    if run.summary and run.summary.get("peak_rss_gb"):
        cards.append((f"{run.summary['peak_rss_gb']:.1f} GB", "peak memory"))
    shown = "".join(f'<div class="card"><b>{value}</b><span>{label}</span></div>' for value, label in cards)
    return f'<div class="cards">{shown}</div>'


def before_after(run: RunRecord) -> str:
    if not (run.before and run.after):
        return '<p class="note">No before/after evaluation in this run (eval.before or eval.after off).</p>'
    b, a = run.before["metrics"], run.after["metrics"]
    rows = [[escape(k), number(b.get(k)), number(a.get(k)), f"{a[k] - b[k]:+.3f}"] for k in compared(a) if k in b]
    notes, _ = significance_notes(run.before, run.after)
    notes_html = "".join(f'<p class="note">{escape(n)}</p>' for n in notes)
    return table(["metric", "before", "after", "change"], rows) + notes_html


def completions(run: RunRecord) -> str:
    """The same problems before and after training, fixed and broken ones first."""
    if not (run.before and run.after and run.before["samples"] and run.after["samples"]):
        return '<p class="note">No per-problem completions recorded.</p>'
    pairs = list(zip(run.before["samples"], run.after["samples"], strict=False))
    kinds = {"fixed": [], "broken": [], "same": []}
    for before, after in pairs:
        b, a = before.get("correct", 0), after.get("correct", 0)
        kinds["fixed" if a > b else "broken" if a < b else "same"].append((before, after))
    counts = ", ".join(f"{len(v)} {k if k != 'same' else 'unchanged'}" for k, v in kinds.items())
    sections = []
    for kind, label in (("fixed", "fixed"), ("broken", "broken"), ("same", "unchanged")):
        rows = [
            [
                f'<span class="tag {kind}">{label}</span>',
                f"<pre>{escape(str(before.get('question', '')))}</pre>"
                f'<span class="note">answer: {escape(str(before.get("answer", "")))}</span>',
                f"<pre>{escape(before.get('completion', ''))}</pre>",
                f"<pre>{escape(after.get('completion', ''))}</pre>",
            ]
            for before, after in kinds[kind][:SHOWN_COMPLETIONS]
        ]
        if rows:
            shown = table(["", "problem", "before training", "after training"], rows, numeric_from=99)
            more = f" (the first {len(rows)} shown)" if len(rows) < len(kinds[kind]) else ""
            opened = " open" if kind != "same" else ""
            sections.append(f"<details{opened}><summary>{len(kinds[kind])} {label}{more}</summary>{shown}</details>")
    intro = f'<p class="note">The same {len(pairs)} problems, greedy answers: {counts}.</p>'
    return intro + '<div class="completions">' + "".join(sections) + "</div>"


def environment(run: RunRecord) -> str:
    if not run.environment:
        return '<p class="note">Not recorded (runs before environment.json was written).</p>'
    rows = [[escape(k), escape(str(v))] for k, v in run.environment.items()]
    return table(["", ""], rows, numeric_from=99)


def render(run: RunRecord) -> str:
    body = [
        f"<h1>{escape(run.name)}</h1>",
        f'<p class="sub">thinktune run report · model {escape(run.model)} · {escape(str(run.path))}</p>',
        headline(run),
        *(f'<div class="alarm"><b>Regression alarm.</b> {escape(alarm)}</div>' for alarm in run.alarms()),
    ]
    if run.best:
        body.append(
            f'<p class="note">best/ holds the model of step {run.best["step"]}: held-out {escape(run.best["metric"])} '
            f"{run.best['value']:.3f}, the best of the evaluations during training.</p>"
        )
    split = split_name(run.after or run.before or {}).capitalize()
    body += [f"<h2>{escape(split)} evaluation: before and after</h2>", '<div class="pair">']
    if run.curve:
        body += [figures([svg(held_out_chart(run))])]
    body += [f"<div>{before_after(run)}</div>", "</div>"]
    body += ["<h2>Training curves</h2>", training_section(run)]
    body += ["<h2>Completions before and after</h2>", completions(run)]
    body += ["<h2>Recipe</h2>", f"<pre>{escape(run.recipe_text)}</pre>", "<h2>Versions and machine</h2>"]
    body += [environment(run)]
    return page(f"{run.name} · thinktune report", "\n".join(body))


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.html`` into the run directory (or to ``out``); returns its path."""
    run = RunRecord.read(run_dir)
    out = Path(out) if out else run.path / "report.html"
    out.write_text(render(run))
    return out
