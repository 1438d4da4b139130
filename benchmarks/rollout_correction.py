"""What `rollout.correction` costs and changes on vLLM's CPU engine: `.venv-vllm/bin/python
benchmarks/rollout_correction.py [--steps N] [--autocast bf16]` (`make test-vllm` builds that environment).

The demo's workload (SmolLM2 LoRA, 4 prompts x 8 completions, 128 tokens) sampled by vLLM with merged weights. Each
step: vLLM samples; the trainer recomputes the old log-probs (the pass they once took, timed; the update now takes
them from its first forward instead; with ``--autocast bf16`` in bfloat16, so its numbers differ from the
sampler's); then on the same rollout the loss
is taken three ways, with no weights (recompute), with truncated importance weights (tis) and with IcePop's band
(icepop), each timed; then the policy takes its update and the next step samples from it. Printed: the per-step
costs, the loss under each mode and its change from recompute, the mean weight and the share of tokens dropped,
and the log-prob gap between vLLM and the trainer.
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

from thinktune.config import RolloutConfig  # noqa: E402
from thinktune.environment import cpu_flags, cpu_name  # noqa: E402
from thinktune.grpo.batching import MicroBatchPlan  # noqa: E402
from thinktune.grpo.losses import LOSSES, LossInputs, correction_weights  # noqa: E402

MODES = ("recompute", "tis", "icepop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="measured steps, after one warm-up step")
    parser.add_argument("--autocast", default="none", help="train.autocast: bf16 makes the trainer's numbers differ")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}; bf16 flags: {', '.join(cpu_flags()) or 'none'}; train.autocast={args.autocast}")
    rows = {mode: {"loss": [], "seconds": [], "weight": [], "dropped": []} for mode in MODES}
    recompute_seconds, gaps = [], []
    with tempfile.TemporaryDirectory() as tmp:
        overrides = ("rollout.backend=vllm", f"train.autocast={args.autocast}")
        trainer = build_trainer(CASES["smollm2-lora"], Path(tmp), Path(tmp) / "runs", overrides)
        for step in range(args.steps + 1):
            _, kept, _ = trainer.collect()
            rollout, advantages = kept.rollout, kept.advantages
            plan = MicroBatchPlan.build(rollout, advantages, trainer.cfg)
            began = time.perf_counter()
            with trainer.policy_update.autocast():  # the pass the old log-probs once took
                old = trainer.policy_update.planned_logprobs(rollout, plan, rollout.logprobs)
            seconds = time.perf_counter() - began
            valid = plan.mask.bool()
            for mode in MODES:
                began = time.perf_counter()
                weights = None
                if mode != "recompute":
                    weights = correction_weights(old, rollout.logprobs, RolloutConfig(correction=mode))
                loss = LOSSES[trainer.cfg.loss](
                    LossInputs(old, old, advantages, plan.mask, weights=weights, **plan.totals)
                )
                if step:  # the first step warms up
                    rows[mode]["seconds"].append(time.perf_counter() - began)
                    rows[mode]["loss"].append(loss.loss.item())
                    rows[mode]["weight"].append(1.0 if weights is None else weights[valid].mean().item())
                    rows[mode]["dropped"].append(
                        0.0 if weights is None else (weights[valid] == 0).float().mean().item()
                    )
            if step:
                recompute_seconds.append(seconds)
                gaps.append((old - rollout.logprobs)[valid].abs().mean().item())
            trainer.learn(rollout, advantages)
    print(
        f"\na separate pass for the old log-probs (no longer run): {statistics.median(recompute_seconds):.2f} s a "
        f"step (median of {args.steps}); mean |log-prob gap| vLLM vs trainer {statistics.fmean(gaps):.2e}\n"
    )
    columns = ["rollout.correction", "its own cost a step", "loss (mean of steps)", "change from recompute",
               "mean weight", "tokens dropped"]  # fmt: skip
    print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    base = statistics.fmean(rows["recompute"]["loss"])
    for mode, r in rows.items():
        loss = statistics.fmean(r["loss"])
        changes = [abs(a - b) for a, b in zip(r["loss"], rows["recompute"]["loss"], strict=True)]
        print(
            f"| {mode} | {statistics.median(r['seconds']) * 1e3:.2f} ms | {loss:+.5f} | "
            f"{statistics.fmean(changes):.5f} (of {abs(base):.5f}) | {statistics.fmean(r['weight']):.4f} | "
            f"{statistics.fmean(r['dropped']):.2%} |"
        )


if __name__ == "__main__":
    main()
