"""What tracking costs a GRPO step: `python benchmarks/trackers.py [RUN_DIR]`.

Replays a finished run's records (each step's metrics, and a completions table of 2 groups x 8 completions, the
default `run.samples_per_step`) through each tracker — JSONL alone, then with TensorBoard, W&B (offline) and
trackio — in a scratch folder, and prints the milliseconds each adds per step next to the run's median step time.
Default RUN_DIR: the newest `runs/*` folder with a metrics.jsonl.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def completion_rows(run: Path, step: int) -> list[dict]:
    from thinktune.jsonl import read_jsonl

    samples = read_jsonl(run / "samples.jsonl")[:2] or [{"question": "q", "answer": "a", "completion": "c"}]
    return [
        {
            "group": group,
            "question": samples[group % len(samples)]["question"],
            "answer": samples[group % len(samples)]["answer"],
            "completion": samples[group % len(samples)]["completion"],
            "reward": 1.0,
            "reward/format": 1.0,
            "reward/task_score": float(j % 2),
            "advantage": 0.5 - j % 2,
            "length": 40,
            "truncated": False,
        }
        for group in range(2)
        for j in range(8)
    ]


def replay(run: Path, names: list[str], scratch: Path) -> float:
    """Median seconds per step that logging one step's records takes with these trackers."""
    from thinktune.jsonl import read_jsonl
    from thinktune.recipe import load_recipe
    from thinktune.run_dir import RunDir
    from thinktune.tracking import make_tracker

    recipe = load_recipe(run / "recipe.yaml", [f"run.output_dir={scratch}", f"run.name={'_'.join(names)}"])
    tracker = make_tracker(names, RunDir(recipe))
    seconds = []
    for record in read_jsonl(run / "metrics.jsonl"):
        step = record["step"]
        metrics = {k: v for k, v in record.items() if k != "step"}
        started = time.perf_counter()
        tracker.log(step, metrics)
        tracker.log_samples(step, completion_rows(run, step))
        seconds.append(time.perf_counter() - started)
    tracker.close()
    return statistics.median(seconds)


def main(run_dir: str | None = None) -> None:
    from thinktune.jsonl import read_jsonl

    run = Path(run_dir) if run_dir else max(Path("runs").glob("**/metrics.jsonl"), key=os.path.getmtime).parent
    records = read_jsonl(run / "metrics.jsonl")
    step = statistics.median(r["seconds_rollout"] + r["seconds_score"] + r["seconds_update"] for r in records)
    print(f"{run}: {len(records)} steps, median step {step:.2f} s")
    with tempfile.TemporaryDirectory(prefix="thinktune-trackers-") as tmp:
        base = replay(run, ["jsonl"], Path(tmp))
        print(f"jsonl alone: {base * 1e3:.2f} ms a step ({base / step:.3%} of a step)")
        for name in ("tensorboard", "wandb", "trackio"):
            extra = replay(run, ["jsonl", name], Path(tmp)) - base
            print(f"+ {name}: {extra * 1e3:+.2f} ms a step ({extra / step:+.3%} of a step)")


if __name__ == "__main__":
    main(*sys.argv[1:])
