"""Does bf16 autocast pay here? `python benchmarks/autocast.py [--steps N] [--rounds R]`.

Runs the benchmark workload (the demo task on SmolLM2, 4 prompts x 8 completions, up to 128 tokens) with
``train.autocast`` none and bf16, alternating, LoRA and full fine-tuning, and prints the median update time per
step (forward + backward + optimizer; sampling is the same float32 decoder either way) and the log-prob gap bf16
opens between sampler and trainer. The CPU's bf16 flags decide the answer: with AMX bf16 matmuls are several
times faster than float32, with only avx512_bf16 they are slower.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import CASES, build_trainer  # noqa: E402

from thinktune.environment import cpu_flags, cpu_name  # noqa: E402


def run(case_name: str, mode: str, steps: int) -> tuple[list[float], list[float]]:
    """Update seconds and log-prob gaps of ``steps`` steps after one warm-up step."""
    case = CASES[case_name]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(case, Path(tmp), Path(tmp) / "runs", (f"train.autocast={mode}",))
        records = [trainer.step(step) for step in range(steps + 1)][1:]
    return [r["seconds_update"] for r in records], [r.get("logprob_mismatch", 0.0) for r in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="measured steps per run (after one warm-up step)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per case and mode, alternating")
    parser.add_argument("--cases", nargs="+", default=["smollm2-lora", "smollm2-full"])
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}; bf16 flags: {', '.join(cpu_flags()) or 'none'}")
    print("| case | autocast | update s/step (median) | log-prob gap (mean) |\n|---|---|---|---|")
    for case in args.cases:
        seconds = {"none": [], "bf16": []}
        gaps = {"none": [], "bf16": []}
        for _ in range(args.rounds):
            for mode in seconds:
                s, g = run(case, mode, args.steps)
                seconds[mode] += s
                gaps[mode] += g
        for mode in seconds:
            print(f"| {case} | {mode} | {statistics.median(seconds[mode]):.2f} | {statistics.fmean(gaps[mode]):.4f} |")
        print(
            f"| {case} | speed-up | {statistics.median(seconds['none']) / statistics.median(seconds['bf16']):.2f}x | |"
        )


if __name__ == "__main__":
    main()
