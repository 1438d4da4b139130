"""Before/after comparison of two evaluations of the same problems: the table, 95% intervals and paired tests."""

from __future__ import annotations

from rich.table import Table

from thinktune.console import console
from thinktune.run_dir import RunDir
from thinktune.stats import paired_sign_test, wilson_interval

COMPARED = ["accuracy", "format_accuracy", "reward", "completion_length", "truncation_rate"]


def compared(metrics: dict) -> list[str]:
    """The metrics a before/after table shows: the fixed ones present, the sampled ones (pass@k …), then each
    reward function's mean."""
    sampled = [key for key in metrics if "@" in key]
    return [key for key in COMPARED if key in metrics] + sampled + sorted(k for k in metrics if k.startswith("reward/"))


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


def split_name(evaluation: dict) -> str:
    """'held-out' or 'validation': what an evaluation graded (files written before splits existed: held-out)."""
    return evaluation.get("split", "held_out").replace("_", "-")


def significance_notes(before: dict, after: dict) -> tuple[list[str], dict]:
    """One line per 0/1 metric (accuracy, format): 95% Wilson intervals and an exact paired sign test.

    Both evaluations grade the same problems (held-out or validation) in the same order, so outcomes pair up.
    """
    notes, tests = [], {}
    split = split_name(after)
    for metric, key in (("accuracy", "correct"), ("format_accuracy", "format")):
        if metric not in after["metrics"]:
            continue  # no reference answers to be accurate against
        b, a = before["metrics"][metric], after["metrics"][metric]
        n = int(after["metrics"]["n"])
        test = paired_sign_test([s[key] for s in before["samples"]], [s[key] for s in after["samples"]])
        (lo_b, hi_b), (lo_a, hi_a) = wilson_interval(b * n, n), wilson_interval(a * n, n)
        notes.append(
            f"{metric} on {n} {split} problems: {b:.3f} [95% CI {lo_b:.3f}-{hi_b:.3f}] -> {a:.3f} "
            f"[{lo_a:.3f}-{hi_a:.3f}]; paired sign test: {test['fixed']} fixed, {test['broken']} broken, "
            f"p = {test['p_value']:.2g}"
        )
        tests[metric] = test
    counts = next((k for k in after["samples"][0] if k.startswith("correct_of_")), None) if after["samples"] else None
    if counts and all(counts in s for s in before["samples"]):
        k = int(counts.removeprefix("correct_of_"))
        test = paired_sign_test([s[counts] for s in before["samples"]], [s[counts] for s in after["samples"]])
        notes.append(
            f"mean@{k} on the same problems: {test['fixed']} got more of their {k} samples right, "
            f"{test['broken']} fewer; paired sign test p = {test['p_value']:.2g}"
        )
        tests[f"mean@{k}"] = test
    return notes, tests


def report_comparison(run: RunDir, before: dict, after: dict, name: str = "comparison.md") -> dict:
    """Print and save the before/after table with confidence intervals and sign tests."""
    b, a = before["metrics"], after["metrics"]
    console.print(comparison_table(b, a, compared(a), f"{split_name(after)} evaluation"))
    notes, tests = significance_notes(before, after)
    for note in notes:
        console.print(note)
    run.file(name).write_text(comparison_markdown(b, a, compared(a)) + "\n" + "\n\n".join(notes) + "\n")
    return {"sign_tests": tests, "notes": notes}
