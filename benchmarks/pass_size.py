"""What a token budget per update pass costs in time, on one fixed rollout:
`python benchmarks/pass_size.py [--budgets none,512,256] [--rounds 3] [--full-length]`.

The benchmark's SmolLM2 LoRA case (4 prompts x 8 completions, up to 128 new tokens, temperature 1.0) samples one
rollout; then the same update (every row given an advantage of +1 or -1, so every row trains) runs under each
``grpo.micro_batch_tokens`` in turn, ``--rounds`` times, alternating, and the median time of each is printed with the
passes it ran. With ``--full-length`` every completion runs to 128 tokens (the plan's worst case). The same rollout for
every budget takes out what separate runs cannot: runs whose passes split differently drift apart (their gradients
sum in another order), sample other completions, and so do other work. The peak memory of each budget is
`thinktune plan`'s to measure, one process each. Its output of 2026-12-06 is kept in benchmarks/PASS_SIZE.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import CASES, build_trainer, every_row_trained  # noqa: E402


def budget_of(text: str) -> int | None:
    """``none`` or a token count.

    >>> budget_of("none"), budget_of("512")
    (None, 512)
    """
    return None if text == "none" else int(text)


def main() -> None:
    from thinktune.allocator import keep_freed_memory
    from thinktune.grpo.batching import MicroBatchPlan

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="none,512,256")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--full-length", action="store_true")
    args = parser.parse_args()
    keep_freed_memory()  # as thinktune train does
    overrides = ("grpo.ignore_eos=true",) if args.full_length else ()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(CASES["smollm2-lora"], Path(tmp), Path(tmp) / "runs", overrides)
        rollout, advantages = every_row_trained(trainer)
        lengths = rollout.completion_mask.sum(-1)
        print(f"rollout: {len(lengths)} completions, {int(lengths.sum())} tokens, {lengths.float().mean():.0f} mean, "
              f"{int(lengths.max())} longest")  # fmt: skip
        base, seconds, passes = trainer.policy_update.cfg, {}, {}
        for _ in range(args.rounds):
            for text in args.budgets.split(","):
                trainer.policy_update.cfg = base.model_copy(update={"micro_batch_tokens": budget_of(text)})
                plan = MicroBatchPlan.build(rollout, advantages, trainer.policy_update.cfg)
                passes[text] = [(len(rows), int(lengths[rows].max())) for rows in plan.batches]
                began = time.perf_counter()
                trainer.learn(rollout, advantages)
                seconds.setdefault(text, []).append(time.perf_counter() - began)
    print(f"\n| grpo.micro_batch_tokens (micro_batch_size {base.micro_batch_size}) | update (s), median of "
          f"{args.rounds} | passes | positions computed (rows x longest) |")  # fmt: skip
    print("|---|---:|---:|---:|")
    for text, times in seconds.items():
        computed = sum(rows * width for rows, width in passes[text])
        print(f"| {text} | {statistics.median(times):.2f} [{min(times):.2f}–{max(times):.2f}] | {len(passes[text])} | "
              f"{computed} |")  # fmt: skip


if __name__ == "__main__":
    main()
