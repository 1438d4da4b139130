"""Compare recipe variants on the validation split: ``thinktune sweep RECIPE grpo.temperature=0.7,1.0 ...``.

Every combination of the given values is trained once per seed with ``eval.split=validation``, so the held-out
set stays untouched while settings are chosen. Each run is an ordinary run directory under ``<sweep>/``; a
finished one is read back instead of trained again, so an interrupted sweep continues where it stopped. The
result is a table (``sweep.md``, ``sweep.json``) of every variant finished under that sweep name, this invocation's
and earlier ones': validation accuracy before and after, the gain per seed with its paired sign test, and the
mean gain with a t-interval over seeds; with ``eval.every``, the same for each step every seed evaluated.
"""

from __future__ import annotations

import itertools
import json
import shutil
import statistics
from pathlib import Path

from thinktune.before_after import significance_notes
from thinktune.config import ConfigError
from thinktune.console import console
from thinktune.evaluation import evaluation_key
from thinktune.recipe import load_recipe, parse_override
from thinktune.run_dir import stage_outputs

# Two-sided 95% t quantiles by degrees of freedom (seeds - 1).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def split_values(text: str) -> list[str]:
    """Split a value list at top-level commas: brackets and braces keep theirs.

    >>> split_values("0.7,1.0"), split_values("[1, 2],[3]"), split_values("{a: 1, b: 2}")
    (['0.7', '1.0'], ['[1, 2]', '[3]'], ['{a: 1, b: 2}'])
    """
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [p.strip() for p in [*parts, current]]


def variants(grid: list[str]) -> list[list[str]]:
    """Every combination of ``key=a,b`` values, as override lists.

    >>> variants(["grpo.temperature=0.7,1.0", "train.steps=10"])
    [['grpo.temperature=0.7', 'train.steps=10'], ['grpo.temperature=1.0', 'train.steps=10']]
    """
    axes = []
    for item in grid:
        key, _ = parse_override(item)
        axes.append([f"{key}={value}" for value in split_values(item.partition("=")[2])])
    return [list(combo) for combo in itertools.product(*axes)] if axes else [[]]


def mean_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (0 for a single value).

    >>> [round(v, 3) for v in mean_interval([0.1, 0.2, 0.3])]
    [0.2, 0.248]
    """
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / len(values) ** 0.5


def sweep(
    recipe_path: str,
    grid: list[str],
    seeds: list[int],
    name: str,
    base_overrides: list[str] = (),
    split: str = "validation",
) -> list:
    """Train every variant for every seed and grade it on ``split``; return and write the comparison table.

    ``split="held_out"`` is the final measurement: the recipe as it is (no grid: settings are chosen on
    validation), once per seed.
    """
    from thinktune.pipeline import train

    if split == "held_out" and grid:
        raise ConfigError("sweep --held-out runs the recipe as it is: choose settings on validation, then write them")
    fixed = [*base_overrides, f"eval.split={split}", "eval.before=true"]
    base = load_recipe(recipe_path, fixed)
    if split == "validation" and not base.data.validation_size:
        raise ConfigError("sweep: set data.validation_size (settings are chosen on a validation split)")
    root = Path(base.run.output_dir) / name
    befores = earlier_befores(root)
    for overrides in variants(grid):
        chosen = [o for o in [*base_overrides, *overrides] if not o.startswith("run.")]  # not settings
        slug = "_".join(o.replace("/", "-") for o in chosen) or "recipe"
        (root / slug).mkdir(parents=True, exist_ok=True)
        (root / slug / "variant.json").write_text(json.dumps({"label": " ".join(chosen), "split": split}))
        for seed in seeds:
            place = [f"run.output_dir={root / slug}", f"run.name=seed{seed}"]
            recipe = load_recipe(recipe_path, [*fixed, *overrides, f"train.seed={seed}", *place])
            folder = root / slug / f"seed{seed}"
            if (folder / "summary.json").is_file():
                continue  # finished earlier: read back below
            console.print(f"[bold]sweep[/] {' '.join(chosen) or '(recipe as is)'}, seed {seed}, {split}")
            key = evaluation_key(recipe)
            if key in befores and not (folder / "eval_before.json").exists():
                folder.mkdir(parents=True, exist_ok=True)  # same start, same evaluation: reuse it
                shutil.copy(befores[key], folder / "eval_before.json")
            train(recipe, resume=bool(stage_outputs(recipe)))
            befores.setdefault(key, folder / "eval_before.json")
    rows = collect(root)
    (root / "sweep.json").write_text(json.dumps(rows, indent=1))
    table = sweep_markdown(rows)
    (root / "sweep.md").write_text(table)
    console.print(table)
    return rows


def earlier_befores(root: Path) -> dict[str, Path]:
    """The "before" evaluations of runs already in the sweep folder, by :func:`~thinktune.evaluation.evaluation_key`."""
    found = {}
    for path in sorted(root.glob("*/seed*/eval_before.json")):
        recipe = load_recipe(path.parent / "recipe.yaml")
        found.setdefault(evaluation_key(recipe), path)
    return found


def collect(root: Path) -> list[dict]:
    """A row for every variant under ``root`` with a finished run (earlier invocations of the sweep included)."""
    rows = []
    for variant in sorted(root.glob("*/variant.json")):
        finished = sorted(variant.parent.glob("seed*/summary.json"))
        if finished:
            seeds = [int(path.parent.name.removeprefix("seed")) for path in finished]
            runs = [json.loads(path.read_text()) for path in finished]
            about = json.loads(variant.read_text())
            label, split = about["label"] or "(recipe as is)", about.get("split", "validation")
            during = during_training(label, seeds, [path.parent for path in finished])
            rows += [{**row, "split": split} for row in [*during, summarise(label, seeds, runs)]]
    return rows


def during_training(label: str, seeds: list[int], folders: list[Path]) -> list[dict]:
    """A row for each ``eval.every`` step that every seed evaluated (``eval_stepN.json``), graded against the same
    "before": with a constant learning rate, the gain a run of that many steps would have made, so one sweep of the
    longest run chooses its length (with a schedule that decays over ``train.steps`` it is only the curve).

    The demo, ``--set eval.every=20``: rows "eval.every=20, step 20" ... "step 120", then the 140-step run's own.
    """
    steps = set.intersection(
        *({int(p.stem.removeprefix("eval_step")) for p in f.glob("eval_step*.json")} for f in folders)
    )
    rows = []
    for step in sorted(steps):
        runs = []
        for folder in folders:
            before, after = (
                json.loads((folder / f"eval_{name}.json").read_text()) for name in ("before", f"step{step}")
            )
            runs.append({"before": before["metrics"], "after": after["metrics"], "seconds": None,
                         "sign_tests": significance_notes(before, after)[1]})  # fmt: skip
        rows.append({**summarise(f"{label}, step {step}", seeds, runs), "step": step})
    return rows


def summarise(label: str, seeds: list[int], runs: list[dict]) -> dict:
    """One variant's row: validation metrics before/after averaged over seeds, per-seed gains and tests."""
    metric = "accuracy" if "accuracy" in runs[0]["after"] else "reward"
    gains = [r["after"][metric] - r["before"][metric] for r in runs]
    gain, half = mean_interval(gains)
    sampled = sorted({k for r in runs for k in r["after"] if k.startswith("mean@")})

    def mean_of(part, key):
        return statistics.fmean(r[part][key] for r in runs) if all(key in r[part] for r in runs) else None

    return {
        "variant": label,
        "metric": metric,
        "seeds": seeds,
        "before": mean_of("before", metric),
        "after": mean_of("after", metric),
        "gain": gain,
        "gain_ci95": half,
        "gains": gains,
        "p_values": [r.get("sign_tests", {}).get(metric, {}).get("p_value") for r in runs],
        "format_after": mean_of("after", "format_accuracy"),
        **{f"{k}_after": mean_of("after", k) for k in sampled},
        "minutes": None if runs[0]["seconds"] is None else statistics.fmean(r["seconds"] for r in runs) / 60,
    }


def sweep_markdown(rows: list[dict]) -> str:
    def number(value, fmt="{:.3f}"):
        return "" if value is None else fmt.format(value)

    sampled = sorted({k for row in rows for k in row if k.startswith("mean@")})
    header = [
        "variant",
        "split",
        "metric",
        "before",
        "after",
        "gain (95% CI over seeds)",
        "per seed (p)",
        "format after",
    ]
    lines = ["| " + " | ".join(header + sampled + ["min/run"]) + " |", "|" + "---|" * (len(header) + len(sampled) + 1)]
    for row in rows:
        per_seed = ", ".join(
            f"{g:+.3f} ({number(p, '{:.2g}')})" for g, p in zip(row["gains"], row["p_values"], strict=True)
        )
        cells = [
            row["variant"],
            row["split"].replace("_", "-"),
            row["metric"],
            number(row["before"]),
            number(row["after"]),
            f"{row['gain']:+.3f} ± {row['gain_ci95']:.3f}",
            per_seed,
            number(row["format_after"]),
            *[number(row.get(k)) for k in sampled],
            number(row["minutes"], "{:.1f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
