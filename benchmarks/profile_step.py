"""Where a thinktune GRPO step spends its time:
`python benchmarks/profile_step.py [smollm2-lora|smollm2-full] [key=value ...]`, e.g. `train.autocast=bf16`.

Runs one warm-up step of the benchmark workload (with the recipe overrides given), then profiles one step with
torch's profiler and prints the operators by self time, grouped by input shape, for the rollout and for the update
separately, and then by operator alone.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import CASES, build_trainer  # noqa: E402


def main(case_name: str = "smollm2-lora", *overrides: str, rows: int = 12) -> None:
    from thinktune.allocator import keep_freed_memory

    keep_freed_memory()  # as the CLI does: without it, page faults refilling freed blocks top the update's table
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(CASES[case_name], Path(tmp), Path(tmp) / "runs", overrides)
        r = trainer.recipe
        trainer.step(0)  # warm-up
        groups = None
        for stage in ("rollout and scoring", "update"):
            with torch.profiler.profile(record_shapes=True) as prof:
                start = time.perf_counter()
                if groups is None:
                    groups = trainer.rollout_round(r.grpo.prompts_per_step)
                else:
                    trainer.learn(groups.rollout, groups.advantages)
                seconds = time.perf_counter() - start
            tokens = int(groups.rollout.completion_mask.sum())
            print(f"\n== {stage}: {seconds:.1f} s under the profiler, {tokens} completion tokens")
            table = prof.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=45, max_shapes_column_width=60
            )
            print(table)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=45))


if __name__ == "__main__":
    main(*sys.argv[1:])
