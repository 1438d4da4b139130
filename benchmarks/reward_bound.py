"""What the time bound on user rewards and the run-folder lock cost: `python benchmarks/reward_bound.py`.

1. One call of a trivial reward on 32 completions: direct, and through the bound (a thread, waited for).
2. Taking and releasing the run folder's lock.
3. Demo steps (SmolLM2 LoRA, the demo recipe at the benchmark's shape) with the demo's own rewards (built-ins:
   never wrapped), and with the same two rewards given as user functions, bounded (rewards[].timeout 60) and
   unbounded (timeout null). Alternating runs; the median scoring and whole-step seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import CASES, build_trainer  # noqa: E402

from thinktune.outputs import RunLock  # noqa: E402
from thinktune.rewards.bounded import call_bounded  # noqa: E402
from thinktune.rewards.formatting import format_reward  # noqa: E402
from thinktune.rewards.gym import task_score_reward  # noqa: E402


def format_user(prompts, completions, **context):
    """The built-in format reward, as a user's function (so it is bounded)."""
    return format_reward(prompts, completions, **context)


def task_score_user(prompts, completions, **context):
    return task_score_reward(prompts, completions, **context)


def per_call_microseconds(calls: int) -> tuple[float, float]:
    completions = ["<reasoning>\n1 + 1 = 2\n</reasoning>\n<answer>\n2\n</answer>"] * 32
    prompts = ["p"] * 32

    def timed(call) -> float:
        began = time.perf_counter()
        for _ in range(calls):
            call()
        return (time.perf_counter() - began) / calls * 1e6

    direct = timed(lambda: format_reward(prompts, completions))
    bounded = timed(lambda: call_bounded(format_reward, (prompts, completions), {}, 60.0, "format"))
    return direct, bounded


def lock_microseconds(rounds: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        for _ in range(rounds):
            with RunLock(Path(folder)):
                pass
        return (time.perf_counter() - began) / rounds * 1e6


VARIANTS = {
    "built-in rewards (the demo as shipped)": (),
    "as user functions, bounded (timeout 60 s)": (
        "rewards=[{name: 'reward_bound:format_user', weight: 0.5}, {name: 'reward_bound:task_score_user'}]",
    ),
    "as user functions, unbounded (timeout null)": (
        "rewards=[{name: 'reward_bound:format_user', weight: 0.5, timeout: null}, "
        "{name: 'reward_bound:task_score_user', timeout: null}]",
    ),
}


def demo_steps(overrides: tuple[str, ...], steps: int) -> list[dict]:
    """``steps`` demo steps after one warm-up step."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(CASES["smollm2-lora"], Path(tmp), Path(tmp) / "runs", overrides)
        return [trainer.step(step) for step in range(steps + 1)][1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="measured demo steps per run (after a warm-up step)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per variant, alternating")
    args = parser.parse_args()

    direct, bounded = per_call_microseconds(2000)
    print(f"one format-reward call on 32 completions: {direct:.0f} µs direct, {bounded:.0f} µs bounded "
          f"(+{bounded - direct:.0f} µs)")  # fmt: skip
    print(f"run-folder lock, taken and released: {lock_microseconds(2000):.0f} µs (once per run)")

    records = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, overrides in VARIANTS.items():
            records[name] += demo_steps(overrides, args.steps)
    print("\n| demo step (SmolLM2 LoRA, 4 x 8, 128 tokens) | scoring s (median) | step s (median) |\n|---|---|---|")
    for name, steps in records.items():
        score = statistics.median(r["seconds_score"] for r in steps)
        total = statistics.median(r["seconds_rollout"] + r["seconds_score"] + r["seconds_update"] for r in steps)
        print(f"| {name} | {score:.4f} | {total:.2f} |")


if __name__ == "__main__":
    main()
