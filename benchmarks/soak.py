"""Memory over a long run: `python benchmarks/soak.py [STEPS]` (default 500).

GRPO on the tiny test model (built on the fly, seconds) for STEPS steps, the resident memory sampled after every
step. Prints the memory at a few points and the least-squares slope after a warm-up, in MB per 100 steps: a leak
shows as a slope that does not go to zero.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import build_tiny_model  # noqa: E402
from tests.helpers import tiny_recipe  # noqa: E402

WARM_UP = 50


def rss_mb() -> float:
    """Resident memory now (not the peak), from /proc."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs.

    >>> slope([0, 1, 2], [1.0, 3.0, 5.0])
    2.0
    """
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def main(steps: int = 500) -> None:
    import torch

    from thinktune.data import load_examples
    from thinktune.grpo.trainer import GRPOTrainer
    from thinktune.run_dir import RunDir
    from thinktune.tracking import make_tracker

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model_dir = str(build_tiny_model(scratch / "tiny-llama"))
        recipe = tiny_recipe(
            scratch, model_dir, f"train.steps={steps}", "rewards=[{name: 'tests.user_rewards:length'}]"
        )
        train_set, _, scorer = load_examples(recipe.data)
        run = RunDir(recipe)
        trainer = GRPOTrainer.from_recipe(recipe, train_set, scorer, run, make_tracker(recipe.run.report_to, run))
        memory = []
        for step in range(steps):
            trainer.step(step)
            memory.append(rss_mb())
    after = memory[WARM_UP:]
    per_100 = 100 * slope(list(range(WARM_UP, steps)), after)
    points = {s: round(memory[s - 1], 1) for s in (1, WARM_UP, steps // 2, steps)}
    print(
        json.dumps(
            {"steps": steps, "rss_mb_at_step": points, "slope_mb_per_100_steps_after_warm_up": round(per_100, 2)}
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
