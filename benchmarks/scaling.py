"""How a GRPO step's time and peak memory grow: `python benchmarks/scaling.py [--rows FILE] [--only SYSTEM]`.

Writes ``benchmarks/SCALING.md`` and the plot ``benchmarks/scaling.png``. Every point runs in a fresh process (peak
RSS is a process's high-water mark): 2 prompts of the demo recipe x G completions of exactly L tokens, LoRA (r 16,
every linear layer), on a random-weight model with SmolLM2's tokenizer. A random model never ends a completion
early, so the work of a step is fixed by (model, L, G); the letter-share reward gives every completion an advantage,
so every update is the full one. Three scans around (SmolLM2-135M, L 128, G 8):

- completion length L 64-1024, G 8, the SmolLM2-135M shape;
- group size G 4-32, L 128;
- model size: SmolLM2-135M, SmolLM2-360M and Llama-3.2-1B shapes (``recipes/models/``), L 128, G 8.

thinktune runs its defaults (float32 here, ``rollout.dtype: model``); TRL's GRPOTrainer (``pip install -e
'.[bench]'``) runs in float32 without gradient checkpointing, with glibc keeping freed memory as thinktune does (its
fastest configuration in ``make bench``), at a few of the points. Two steps a point, the second timed; the heaviest
points (L >= 512, G 32, the larger models) take one cold step, to keep the whole run near half an hour on 2 cores.
``--rows FILE`` keeps finished points: a rerun with it measures only what is missing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from memory_savers import NO_EVALUATION, peak_mb, random_model, trl_worker  # noqa: E402

# (model, completion tokens L, group size G) of each scan; the three cross at (SmolLM2-135M, 128, 8)
SCANS = {
    "length": [("smollm2-135m", length, 8) for length in (64, 128, 256, 512, 1024)],
    "group": [("smollm2-135m", 128, group) for group in (4, 8, 16, 32)],
    "model": [(model, 128, 8) for model in ("smollm2-135m", "smollm2-360m", "llama-3.2-1b")],
}
PROMPTS = 2
POINTS = [
    *[("thinktune", *point) for point in dict.fromkeys(p for points in SCANS.values() for p in points)],
    *[("trl", "smollm2-135m", length, 8) for length in (64, 128, 256)],
    ("trl", "smollm2-135m", 128, 16),
    ("trl", "smollm2-360m", 128, 8),
]


def micro_batch_of(length: int) -> int:
    """Rows per update pass: the benchmark workload's 8, except at L 1024, where 8 rows' activations in one pass did not
    fit this machine's 24 GB (the process was killed; L 512 peaked at 12.4 GB)."""
    return 4 if length >= 1024 else 8


def steps_of(model: str, length: int, group: int) -> int:
    """One cold step for the heaviest points, else two (the second timed)."""
    return 1 if length >= 512 or group >= 32 or model != "smollm2-135m" else 2


def key(system: str, model: str, length: int, group: int) -> str:
    return f"{system} {model} L{length} G{group}"


def find(rows: list[dict], system: str, model: str, length: int, group: int) -> dict | None:
    return next((r for r in rows if r["key"] == key(system, model, length, group)), None)


def worker(system: str, model: str, length: int, group: int, scratch: Path) -> dict:
    """One point's step seconds (and, for thinktune, its rollout and update seconds) and peak RSS."""
    import torch
    from workload import Case, build_trainer

    torch.manual_seed(0)
    path = random_model(ROOT / "recipes/models" / f"{model}.json", scratch / model, "bfloat16")
    steps = steps_of(model, length, group)
    row = {"key": key(system, model, length, group), "system": system, "model": model, "L": length, "G": group}
    if system == "trl":
        result = trl_worker(row["key"], path, steps, length, scratch, group, PROMPTS, checkpointing=False)
        return {**row, "step_s": result["step_seconds"], "peak_rss_mb": result["peak_rss_mb"]}
    case = Case(row["key"].replace(" ", "_"), path, "lora", steps, reward="workload:letter_share")
    overrides = (f"grpo.max_new_tokens={length}", f"grpo.group_size={group}", f"grpo.prompts_per_step={PROMPTS}",
                 f"grpo.micro_batch_size={micro_batch_of(length)}", *NO_EVALUATION)  # fmt: skip
    trainer = build_trainer(case, scratch, Path(tempfile.mkdtemp(prefix="scaling-")), overrides)
    for step in range(steps):
        began = time.perf_counter()
        record = trainer.step(step)
        seconds = time.perf_counter() - began
    return {**row, "step_s": seconds, "rollout_s": record["seconds_rollout"], "update_s": record["seconds_update"],
            "peak_rss_mb": peak_mb()}  # fmt: skip


def measure(point: tuple, scratch: Path) -> dict | None:
    command = [sys.executable, __file__, "--worker", json.dumps(point), "--scratch", str(scratch)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:  # one point failing must not lose the others
        print(f"{key(*point)}: failed (exit {done.returncode})\n{done.stderr[-3000:]}", flush=True)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", help="JSON Lines file of finished points: rerun with it to skip what is measured")
    parser.add_argument("--only", choices=["thinktune", "trl"], help="measure one system's points")
    parser.add_argument("--model-cache", help="keep the random-weight models in this folder (default: temporary)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        from thinktune.allocator import keep_freed_memory

        keep_freed_memory()  # both systems: thinktune's CLI does it, and it is TRL's fastest setting in make bench
        print(json.dumps(worker(*json.loads(args.worker), Path(args.scratch))))
        return
    rows_file = Path(args.rows) if args.rows else None
    rows = (
        [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file and rows_file.is_file() else []
    )
    with tempfile.TemporaryDirectory() as scratch:
        for point in POINTS:
            if any(r["key"] == key(*point) for r in rows) or args.only not in (None, point[0]):
                continue
            row = measure(point, Path(args.model_cache or scratch))
            if row is None:
                continue
            print(row, flush=True)
            rows.append(row)
            if rows_file:
                with rows_file.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    write(rows)


def write(rows: list[dict]) -> None:
    from thinktune.environment import cpu_flags, cpu_name

    def cells(system, point):
        r = find(rows, system, *point)
        return ("–", "–") if r is None else (f"{r['step_s']:.1f}", f"{r['peak_rss_mb'] / 1024:.2f}")

    lines = [
        "# How a GRPO step scales (`python benchmarks/scaling.py`)",
        "",
        f"{time.strftime('%Y-%m-%d')}, CPU: {cpu_name()} (bf16 flags: {', '.join(cpu_flags()) or 'none'}), "
        f"2 cores. LoRA, {PROMPTS} prompts x G completions of exactly L tokens, random weights; step seconds and peak "
        "RSS (GiB) of a fresh process (* one cold step; † 4 rows an update pass, else 8); thinktune's rollout and "
        "update seconds. "
        "![scaling](scaling.png)",
        "",
        "| scan | model | L | G | thinktune step (s) | rollout (s) | update (s) | peak RSS (GiB) "
        "| TRL step (s) | TRL peak RSS (GiB) | TRL / thinktune step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scan, points in SCANS.items():
        for point in points:
            ours, theirs = find(rows, "thinktune", *point), find(rows, "trl", *point)
            step, rss = cells("thinktune", point)
            phases = (f"{ours['rollout_s']:.1f}", f"{ours['update_s']:.1f}") if ours else ("–", "–")
            ratio = f"{theirs['step_s'] / ours['step_s']:.2f}x" if ours and theirs else "–"
            cold = ("*" if steps_of(*point) == 1 else "") + ("†" if micro_batch_of(point[1]) != 8 else "")
            lines.append(f"| {scan} | {' | '.join(map(str, point))} | {step}{cold} | {' | '.join(phases)} | {rss} | "
                         f"{' | '.join(cells('trl', point))} | {ratio} |")  # fmt: skip
    (ROOT / "benchmarks/SCALING.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows)


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 3, figsize=(13, 7))
    axis_of = {"length": 1, "group": 2, "model": 0}  # which of (model, L, G) varies
    labels = {"length": "completion tokens L (G 8)", "group": "group size G (L 128)", "model": "model (L 128, G 8)"}
    for column, (scan, points) in enumerate(SCANS.items()):
        for system, marker in (("thinktune", "o-"), ("trl", "s--")):
            found = [(i, r) for i, p in enumerate(points) if (r := find(rows, system, *p))]
            xs = [points[i][axis_of[scan]] if scan != "model" else i for i, _ in found]
            axes[0][column].plot(xs, [r["step_s"] for _, r in found], marker, label=system)
            axes[1][column].plot(xs, [r["peak_rss_mb"] / 1024 for _, r in found], marker, label=system)
        for row in (0, 1):
            axis = axes[row][column]
            if scan == "model":
                axis.set_xticks(range(len(points)), [p[0] for p in points])
            else:
                axis.set_xscale("log", base=2)
            axis.set_xlabel(labels[scan])
            axis.set_ylabel("step (s)" if row == 0 else "peak RSS (GiB)")
            axis.legend()
    figure.tight_layout()
    figure.savefig(ROOT / "benchmarks/scaling.png", dpi=80)


if __name__ == "__main__":
    main()
