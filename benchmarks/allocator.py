"""What keeping freed memory (thinktune.allocator) buys: `python benchmarks/allocator.py`.

Runs the SmolLM2 LoRA benchmark step's update several times on one fixed rollout, in a fresh process with
glibc's default malloc and in one with freed memory kept, and prints wall time, user and kernel CPU time,
minor page faults and peak RSS per update (median over the measured repeats, after one warm-up).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from workload import CASES, build_trainer  # noqa: E402


def worker(repeats: int) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(CASES["smollm2-lora"], Path(tmp), Path(tmp) / "runs")
        rollout = trainer.rollout_round(trainer.cfg.prompts_per_step).rollout
        # Every row trains (no zero advantages), so each repeat does the same, largest amount of work.
        advantages = torch.randn(rollout.completion_ids.shape[0], generator=torch.Generator().manual_seed(0))
        runs = []
        for _ in range(repeats + 1):
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            trainer.learn(rollout, advantages)
            after = resource.getrusage(resource.RUSAGE_SELF)
            runs.append(
                {
                    "seconds": time.perf_counter() - start,
                    "user": after.ru_utime - before.ru_utime,
                    "kernel": after.ru_stime - before.ru_stime,
                    "page_faults": after.ru_minflt - before.ru_minflt,
                }
            )
        measured = runs[1:]
        summary = {key: statistics.median(run[key] for run in measured) for key in measured[0]}
        summary["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        return summary


def main(repeats: int = 4) -> None:
    print(f"SmolLM2 LoRA update, 32 rows, median of {repeats} after a warm-up")
    print(f"{'malloc':<22}{'wall s':>8}{'user s':>8}{'kernel s':>10}{'page faults':>13}{'peak RSS GB':>13}")
    for label, keep in (("glibc default", "0"), ("freed memory kept", "1")):
        env = {**os.environ, "THINKTUNE_KEEP_FREED_MEMORY": keep}
        out = subprocess.run(
            [sys.executable, __file__, "--worker", str(repeats)], env=env, capture_output=True, text=True, check=True
        ).stdout
        s = json.loads(out.strip().splitlines()[-1])
        print(
            f"{label:<22}{s['seconds']:>8.1f}{s['user']:>8.1f}{s['kernel']:>10.1f}"
            f"{s['page_faults']:>13,.0f}{s['peak_rss_gb']:>13.2f}"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(worker(int(sys.argv[2]))))
    else:
        main()
