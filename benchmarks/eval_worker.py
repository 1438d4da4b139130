"""What `eval.worker` saves a run with `eval.every`: `python benchmarks/eval_worker.py [--steps 20] [--every 5]`.

Trains the demo recipe (SmolLM2-135M, LoRA) once per variant in a scratch folder, one run after the other: its
`eval.every` evaluations made inline; by the evaluation worker on the CPU with torch's default threads in both
processes; and by the worker with the cores split (one thread each on two cores). It prints a table of each run's
seconds for the GRPO stage (evaluations included), its median step and whether its eval curve equals the inline
one, and writes benchmarks/eval_worker.json. On a CPU the worker and the trainer share the same cores, the worst
case for it: the evaluation is overlapped, not free. On a second device it would be.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(folder: Path, name: str, overrides: list[str]) -> dict:
    command = [sys.executable, "-m", "thinktune.cli", "train", str(ROOT / "recipes" / "demo.yaml"),
               f"run.output_dir={folder}", f"run.name={name}", *overrides]  # fmt: skip
    began = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    summary = json.loads((folder / name / "summary.json").read_text())
    curve = [json.loads(line) for line in (folder / name / "eval_curve.jsonl").read_text().splitlines()]
    return {
        "wall_seconds": round(wall, 1),
        "grpo_seconds": round(summary["seconds"], 1),
        "median_step_seconds": round(summary["median_step_seconds"], 2),
        "curve": [{k: r[k] for k in ("step", "accuracy", "format_accuracy")} for r in curve],
    }


VARIANTS = {  # name: overrides beside the common ones
    "inline": [],
    "worker": ["eval.worker=true"],
    "worker, cores split": ["eval.worker=true", "run.threads=1", "eval.worker_threads=1"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--eval-size", type=int, default=100)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    common = [f"train.steps={args.steps}", f"eval.every={args.every}", f"data.eval_size={args.eval_size}",
              "eval.before=false", "eval.after=false"]  # fmt: skip
    results = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "settings": common}
    with tempfile.TemporaryDirectory() as scratch:
        for index, name in enumerate(args.variants):
            results[name] = run(Path(scratch), f"run{index}", common + VARIANTS[name])
            print(f"{name}: {results[name]['grpo_seconds']} s GRPO stage, median step "
                  f"{results[name]['median_step_seconds']} s", flush=True)  # fmt: skip
    baseline = results[args.variants[0]]
    print(f"\n| variant | GRPO stage (s) | median step (s) | against {args.variants[0]} | same eval curve |")
    print("|---|---|---|---|---|")
    for name in args.variants:
        r = results[name]
        r["same_curve"] = r["curve"] == baseline["curve"]
        print(f"| {name} | {r['grpo_seconds']} | {r['median_step_seconds']} | "
              f"{r['grpo_seconds'] / baseline['grpo_seconds']:.2f}x | {r['same_curve']} |")  # fmt: skip
    (Path(__file__).parent / "eval_worker.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
