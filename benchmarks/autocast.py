"""Does bf16 autocast pay here? `python benchmarks/autocast.py [--cases smollm2-lora,smollm2-full] [--rounds 3]
[--full-length]`.

For each case of the benchmark workload (the demo task on SmolLM2, 4 prompts x 8 completions, up to 128 tokens,
temperature 1.0, the demo's sampler) it samples one rollout, gives every row an advantage of +1 or -1 so every row
trains, and runs the same update (at learning rate 0, so the weights stay the sampler's) with ``train.autocast``
none and bf16 in turn, ``--rounds`` times after a warm-up round, alternating. It prints the median update time of
each (forward, backward and optimizer step) and the mean log-prob gap between the sampler and the trainer. With
``--full-length`` every completion runs to 128 tokens. One rollout for both modes takes out what separate runs
cannot: runs whose updates compute differently sample other completions from their second step on, and so do other
work (the way this script measured until 2026-12-06). The CPU decides the answer: machines of one kind differ, and
one with only ``avx512_bf16`` ran bf16 matmuls slower than float32 where another ran them 2.2 times faster.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import CASES, build_trainer, every_row_trained  # noqa: E402

from thinktune.environment import cpu_flags, cpu_name  # noqa: E402

MODES = ("none", "bf16")


def run(case_name: str, rounds: int, full_length: bool) -> tuple[dict[str, list[float]], dict[str, list[float]], int]:
    """Update seconds and log-prob gaps per ``train.autocast`` mode on one rollout of ``case_name``, and its tokens."""
    from thinktune.allocator import keep_freed_memory
    from thinktune.training import autocast

    keep_freed_memory()  # as thinktune train does
    # bf16 at build time: the old log-probs are then the update's own in both modes (where auto means none and the
    # sampler is float32, they would be the sampler's, and the bf16 mode's gap would read 0)
    overrides = ("train.autocast=bf16",) + (("grpo.ignore_eos=true",) if full_length else ())
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    gaps: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(CASES[case_name], Path(tmp), Path(tmp) / "runs", overrides)
        rollout, advantages = every_row_trained(trainer)
        # learning rate 0: the optimizer steps but the weights stay the sampler's, so every round runs the same
        # update on the same numbers and the log-prob gaps of the two modes compare
        trainer.scheduler.base_lrs = [0.0] * len(trainer.scheduler.base_lrs)
        for group in trainer.optimizer.param_groups:
            group["lr"] = 0.0
        for round_ in range(rounds + 1):  # round 0 warms up: AdamW's state, the frozen weights' bf16 copies
            for mode in MODES:
                trainer.policy_update.autocast = functools.partial(autocast, trainer.model, mode)
                began = time.perf_counter()
                stats = trainer.learn(rollout, advantages)
                if round_:
                    seconds[mode].append(time.perf_counter() - began)
                    gaps[mode].append(stats.logprob_mismatch or 0.0)
    return seconds, gaps, int(rollout.completion_mask.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="smollm2-lora,smollm2-full")
    parser.add_argument("--rounds", type=int, default=3, help="updates per mode, alternating")
    parser.add_argument("--full-length", action="store_true", help="every completion runs to 128 tokens")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}; bf16 flags: {', '.join(cpu_flags()) or 'none'}")
    print("| case | completion tokens | autocast | update s (median [min–max]) | log-prob gap (mean) |")
    print("|---|---:|---|---:|---:|")
    for case in args.cases.split(","):
        seconds, gaps, tokens = run(case, args.rounds, args.full_length)
        for mode in MODES:
            times = seconds[mode]
            print(f"| {case} | {tokens} | {mode} | {statistics.median(times):.2f} [{min(times):.2f}–{max(times):.2f}] "
                  f"| {statistics.fmean(gaps[mode]):.4f} |")  # fmt: skip
        speedup = statistics.median(seconds["none"]) / statistics.median(seconds["bf16"])
        print(f"| {case} | {tokens} | speed-up | {speedup:.2f}x | |")


if __name__ == "__main__":
    main()
