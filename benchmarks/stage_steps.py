"""SFT, reward-model and demo step time: `python benchmarks/stage_steps.py [--steps N] [--set KEY=VALUE] [--profile]`.

Runs ``sft`` of recipes/math_sft_grpo.yaml and ``reward_model`` of recipes/cot_reward_model.yaml (by default;
``--stages demo`` runs the GRPO steps of recipes/demo.yaml, without its evaluations, and also prints the median
rollout and update seconds of a step) for ``--steps`` optimizer steps after one warm-up step, with glibc keeping
freed memory as the CLI has it, and prints the median seconds per step [min-max] with the tokens a step trains (the
demo: generates). A step is timed between two consecutive records the stage logs (forward, backward, optimizer), so
evaluations and saving are outside it. The reward model trains on pairs the
recipe's ``pairs`` stage writes once (greedy, so the same every time) into ``--pairs``, reused on later runs.

``--against OTHER/src`` compares with another revision: runs of that checkout and of this one alternate, each in a
fresh process, and the pooled medians and their ratio are printed; ``--against-set`` gives the other revision
overrides of its own (default: those of ``--set``), e.g. its defaults against this one's ``train.autocast=bf16``.
``PYTHONPATH=OTHER/src python benchmarks/stage_steps.py`` measures the other revision alone (the output names the
thinktune it ran).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import thinktune
from thinktune.data.sources import load_examples
from thinktune.environment import cpu_flags, cpu_name
from thinktune.recipe import load_recipe
from thinktune.run_dir import RunDir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import matmul_peak  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {
    "sft": "recipes/math_sft_grpo.yaml",
    "reward_model": "recipes/cot_reward_model.yaml",
    "demo": "recipes/demo.yaml",
}
PHASES = ("seconds_rollout", "seconds_update")  # a GRPO step's parts, as its record names them


class StepClock:
    """A tracker that keeps the time each record arrives: a step's seconds are the gap to the one before."""

    def __init__(self):
        self.times: list[float] = []
        self.records: list[dict] = []

    def log(self, step: int, metrics: dict, stage: str = "grpo") -> None:
        self.times.append(time.perf_counter())
        self.records.append(metrics)

    def log_samples(self, step, rows) -> None:
        pass

    def rewind(self, step, stage="grpo") -> None:
        pass

    def close(self) -> None:
        pass

    def step_seconds(self) -> list[float]:
        """Seconds of every step after the first (it warms up, and has no record before it)."""
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]


def sft_steps(steps: int, overrides: list[str], folder: Path) -> tuple[list[float], float]:
    from thinktune.models import load_policy
    from thinktune.sft import run_sft, sft_data

    recipe = load_recipe(
        str(ROOT / RECIPES["sft"]),
        [f"sft.steps={steps + 1}", f"run.output_dir={folder}", "run.save_every=100000", *overrides],
    )
    train, _, _ = load_examples(recipe.data)
    model, tokenizer = load_policy(recipe.model)
    clock = StepClock()
    run_sft(recipe, model, tokenizer, train, clock, RunDir(recipe))
    data = sft_data(recipe, train, tokenizer)
    tokens = statistics.mean(len(p) + len(t) for p, t in zip(data.prompts, data.targets, strict=True))
    sft_padding(data, recipe, steps + 1)
    return clock.step_seconds(), tokens * recipe.sft.batch_size


def sft_padding(data, recipe, steps: int) -> None:
    """Print the positions the run's batches compute, padding included: prompts left-padded before right-padded
    targets in one pass, and sorted into passes of whole sequences (where this thinktune has them)."""
    try:
        from thinktune.tokens import length_groups
    except ImportError:
        try:  # where it lived before GRPO used it too
            from thinktune.sft import length_groups
        except ImportError:
            return
    from thinktune.training import EpochBatches

    batches, real, split, grouped = EpochBatches(len(data.targets), recipe.train.seed), 0, 0, 0
    lengths = [len(p) + len(t) for p, t in zip(data.prompts, data.targets, strict=True)]
    for _ in range(steps):
        batch = batches.next(recipe.sft.batch_size)
        real += sum(lengths[i] for i in batch)
        split += len(batch) * (max(len(data.prompts[i]) for i in batch) + max(len(data.targets[i]) for i in batch))
        for group in length_groups(batch, lengths, recipe.sft.micro_batch_tokens):
            grouped += len(group) * max(lengths[i] for i in group)
    print(
        f"sft positions over {steps} steps: {real} real; prompt then target padded apart {split} "
        f"({split / real:.2f}x); whole sequences in passes of sft.micro_batch_tokens={recipe.sft.micro_batch_tokens}: "
        f"{grouped} ({grouped / real:.2f}x)"
    )


def demo_steps(steps: int, overrides: list[str], folder: Path) -> tuple[list[float], float, dict[str, list[float]]]:
    """The demo's GRPO steps (the same prompts and samples in every run of a revision: the recipe's seed), their
    completion tokens a step, and each step's rollout and update seconds."""
    from thinktune.grpo.trainer import GRPOTrainer
    from thinktune.pipeline import seed_everything

    settings = [f"train.steps={steps + 1}", f"run.output_dir={folder}", "run.save_every=100000", "run.report_to=[]"]
    recipe = load_recipe(str(ROOT / RECIPES["demo"]), [*settings, *overrides])
    train, _, task = load_examples(recipe.data)
    clock = StepClock()
    seed_everything(recipe.train.seed)
    GRPOTrainer.from_recipe(recipe, train, task, RunDir(recipe), clock).train()
    measured = clock.records[1:]
    rows = recipe.grpo.group_size * recipe.grpo.prompts_per_step
    tokens = statistics.mean(record["completion_length"] * rows for record in measured)
    return clock.step_seconds(), tokens, {phase: [r[phase] for r in measured] for phase in PHASES}


def reward_model_steps(steps: int, overrides: list[str], folder: Path, pairs: Path) -> tuple[list[float], float]:
    from thinktune.models import resolve_model
    from thinktune.preference import read_pairs, train_reward_model
    from thinktune.rewards.reward_model import scoring_tokenizer

    eval_pairs, batch = 8, 8
    settings = [f"run.output_dir={folder}", "run.save_every=100000", f"reward_model.eval_pairs={eval_pairs}"]
    if not pairs.is_file():
        from thinktune.pairs import build_pairs

        recipe = load_recipe(str(ROOT / RECIPES["reward_model"]), [*settings, f"pairs.out={pairs}"])
        train, _, _ = load_examples(recipe.data)
        build_pairs(recipe, train[: batch * (steps + 1) + eval_pairs])
    recipe = load_recipe(
        str(ROOT / RECIPES["reward_model"]),
        [*settings, f"reward_model.pairs={pairs}", f"reward_model.steps={steps + 1}", *overrides],
    )
    clock = StepClock()
    train_reward_model(recipe, RunDir(recipe), clock)
    read = read_pairs(str(pairs))
    tokenizer = scoring_tokenizer(resolve_model(recipe.model.name))
    cfg = recipe.reward_model
    texts = [[p + a for p, a in zip(read.prompts, answers, strict=True)] for answers in (read.chosen, read.rejected)]
    chosen, rejected = (tokenizer(t, truncation=True, max_length=cfg.max_length)["input_ids"] for t in texts)
    positions(chosen, rejected, tokenizer.pad_token_id, cfg.micro_batch_size)
    tokens = statistics.mean(len(c) + len(r) for c, r in zip(chosen, rejected, strict=True))
    return clock.step_seconds(), tokens * cfg.batch_size


def positions(chosen: list[list[int]], rejected: list[list[int]], pad_id: int, micro: int) -> None:
    """Print the token positions a pass over the pairs computes, padding included, run whole and with the shared
    prompt run once (where this thinktune has it)."""
    try:
        from thinktune.preference import shared_length
    except ImportError:
        return
    shared = [shared_length(c, r, pad_id) for c, r in zip(chosen, rejected, strict=True)]
    whole = once = 0
    for first in range(0, len(chosen), micro):
        c, r, k = chosen[first : first + micro], rejected[first : first + micro], shared[first : first + micro]
        whole += 2 * len(c) * max(map(len, c + r))
        rests = [max(len(s) - n for s, n in zip(side, k, strict=True)) for side in (c, r)]
        once += len(c) * (max(k) + sum(rests))
    print(
        f"reward_model pairs: {statistics.mean(map(len, chosen)):.0f} tokens chosen, "
        f"{statistics.mean(map(len, rejected)):.0f} rejected, {statistics.mean(shared):.0f} shared on average; "
        f"positions per pass of {micro} pairs, padding included: {whole} whole, {once} with the prompt once "
        f"({once / whole:.2f})"
    )


@contextlib.contextmanager
def profiled(enabled: bool, steps: int):
    """With ``enabled``, torch's profiler over the block (loading included), then the operators taking the most
    time, in seconds a step over its ``steps`` (the warm-up counted)."""
    if not enabled:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        yield
    totals = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    print("where the time goes (self CPU seconds a step):")
    for event in totals:
        print(f"  {event.key[:60]:60} {event.self_cpu_time_total / 1e6 / steps:7.2f} s  ({event.count} calls)")


def revision() -> str:
    source = Path(thinktune.__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(source), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
        return f"{source} at {out.stdout.strip()[:80]}"
    except OSError:
        return str(source)


def compare(args) -> None:
    """Runs of ``args.against`` and of this checkout in turn, each in a process of its own (so a slow spell of the
    machine falls on both), then every step's seconds pooled per revision."""
    import os

    own = Path(thinktune.__file__).resolve().parent.parent
    pooled: dict[str, dict[str, list[float]]] = {"against": {}, "this": {}}
    against_overrides = args.overrides if args.against_overrides is None else args.against_overrides
    for _ in range(args.rounds):
        for label, source, overrides in (
            ("against", args.against.resolve(), against_overrides),
            ("this", own, args.overrides),
        ):
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                command = [sys.executable, __file__, "--steps", str(args.steps), "--stages", *args.stages,
                           "--pairs", str(args.pairs), "--json", out.name, "--set", *overrides]  # fmt: skip
                env = {**os.environ, "PYTHONPATH": str(source)}
                subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for stage, figures in json.loads(Path(out.name).read_text()).items():
                    for part in ("seconds", *PHASES):
                        pooled[label].setdefault(f"{stage} {part}", []).extend(figures.get(part, []))
    print(f"{args.rounds} alternating runs each of {args.against} and {own}, {args.steps} steps a run")
    print(f"overrides: {against_overrides or 'none'} against {args.overrides or 'none'}")
    for part, before in pooled["against"].items():
        if before and pooled["this"][part]:
            before, after = statistics.median(before), statistics.median(pooled["this"][part])
            print(f"{part}: {before:.3f} s/step against {after:.3f} s/step: {before / after:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="measured steps per stage (after one warm-up step)")
    parser.add_argument("--stages", nargs="+", default=["sft", "reward_model"], choices=sorted(RECIPES))
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", help="recipe overrides, e.g. a=b")
    parser.add_argument("--pairs", type=Path, default=Path(tempfile.gettempdir()) / "thinktune-bench-pairs.jsonl")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--against", type=Path, help="another checkout's src/: run it and this one alternately")
    parser.add_argument("--against-set", nargs="*", dest="against_overrides", help="overrides for --against's runs")
    parser.add_argument("--rounds", type=int, default=2, help="with --against: runs of each, alternating")
    parser.add_argument("--profile", action="store_true", help="also print where the stage's time goes, by operator")
    args = parser.parse_args()
    if args.against:
        return compare(args)
    from thinktune.allocator import keep_freed_memory

    keep_freed_memory()  # as the CLI does: the figures are those of `thinktune train`
    print(f"CPU: {cpu_name()}; bf16 flags: {', '.join(cpu_flags()) or 'none'}; torch threads {torch.get_num_threads()}")
    print(f"thinktune: {revision()}; overrides: {args.overrides or 'none'}")
    peaks = {dtype: matmul_peak(getattr(torch, dtype)) for dtype in ("float32", "bfloat16")}
    print("matmul peak (2048³): " + ", ".join(f"{dtype} {gflops:.0f} GFLOP/s" for dtype, gflops in peaks.items()))
    results = {}
    for stage in args.stages:
        with tempfile.TemporaryDirectory() as tmp, profiled(args.profile, args.steps + 1):
            phases = {}
            if stage == "sft":
                seconds, tokens = sft_steps(args.steps, args.overrides, Path(tmp))
            elif stage == "demo":
                seconds, tokens, phases = demo_steps(args.steps, args.overrides, Path(tmp))
            else:
                seconds, tokens = reward_model_steps(args.steps, args.overrides, Path(tmp), args.pairs)
        median = statistics.median(seconds)
        results[stage] = {"seconds": seconds, "median": median, "tokens_per_step": tokens, **phases}
        print(
            f"{stage} ({RECIPES[stage]}): {median:.2f} s/step [{min(seconds):.2f}-{max(seconds):.2f}] over "
            f"{len(seconds)} steps; {tokens:.0f} tokens/step, {tokens / median:.0f} tokens/s"
            + "".join(f"; {phase} median {statistics.median(times):.3f}" for phase, times in phases.items())
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
