"""The measuring process of ``thinktune plan`` (:mod:`thinktune.plan`):
``python -m thinktune.worst_case RECIPE REPORT [REPEATS]``.

It builds the policy, the rollout backend and the update as ``thinktune train`` does, then writes one JSON line per
phase to REPORT, each with its peak memory (GB) and time (s): loading (the model, and the optimizer's state allocated
as after step 1), the rollout, one evaluation batch, and the update at each micro-batch size asked for, smallest
first. Crossing the budget ends the process with exit status 3 after a line saying where.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

from thinktune.config import Recipe
from thinktune.plan import EXCEEDED, GB, candidates, free_memory_gb

WATCH_SECONDS = 0.005  # how often the CPU watchdog reads the resident memory


class MemoryMeter:
    """This process's memory on ``device``, now and at its peak since :meth:`reset`, in GB."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        with contextlib.suppress(OSError):  # Linux: 5 resets the peak RSS (VmHWM) to the current RSS
            Path("/proc/self/clear_refs").write_text("5")  # elsewhere the peak is the process's: an upper bound

    def peak(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_reserved() / GB
        try:
            return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) * 1024 / GB
        except (OSError, IndexError, ValueError):
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return peak / GB if sys.platform == "darwin" else peak * 1024 / GB

    def current(self) -> float:
        if self.cuda:
            return torch.cuda.memory_reserved() / GB
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GB
        except OSError:
            return self.peak()


class Phases:
    """Times each phase and reports its peak; stops the process when its memory crosses ``budget`` GB."""

    def __init__(self, report: Path, meter: MemoryMeter, budget: float):
        self.file, self.meter, self.budget = report.open("a"), meter, budget
        self.where: dict = {"phase": "loading"}

    def enforce(self, device: torch.device) -> None:
        """From now on, stop at the budget."""
        if self.meter.cuda:  # the allocator refuses past the budget: an out-of-memory error inside a phase
            total = torch.cuda.get_device_properties(device).total_memory / GB
            index = device.index if device.index is not None else torch.cuda.current_device()  # "cuda" has none
            torch.cuda.set_per_process_memory_fraction(min(1.0, self.budget / total), index)
        else:
            threading.Thread(target=self._watch, daemon=True).start()

    def emit(self, line: dict) -> None:
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()

    def stop(self, gb: float) -> None:
        self.emit({"exceeded": {**self.where, "gb": round(gb, 3)}})
        os._exit(EXCEEDED)

    def _watch(self) -> None:
        while True:
            if (now := self.meter.current()) > self.budget:
                self.stop(now)
            time.sleep(WATCH_SECONDS)

    def note(self, **facts) -> None:
        """Facts of the current phase, reported with it."""
        self.where.update(facts)

    @contextlib.contextmanager
    def phase(self, name: str, **facts):
        self.where = {"phase": name, **facts}
        self.meter.reset()
        began = time.perf_counter()
        try:
            yield
        except torch.OutOfMemoryError:
            self.stop(self.budget)
        self.emit({**self.where, "seconds": time.perf_counter() - began, "peak_gb": self.meter.peak()})


def worst_case(recipe: Recipe, phases: Phases, repeats: int = 1) -> None:
    """Measure the recipe's worst-case step phase by phase (see :mod:`thinktune.plan`), each update ``repeats``
    times (the first one pays for touching memory the first time)."""
    from thinktune.data import PromptBuilder, load_examples
    from thinktune.grpo.trainer import GRPOTrainer
    from thinktune.models import load_policy
    from thinktune.rollout import SamplingParams, make_backend

    g = recipe.grpo
    with phases.phase("loading"):
        train_set, held_out, _ = load_examples(recipe.data, recipe.eval.split)
        model, tokenizer = load_policy(recipe.model)
        trainer = GRPOTrainer(recipe, make_backend(recipe.rollout, model, tokenizer), model, train_set, None, None,
                              None, None)  # fmt: skip
        for p in model.parameters():  # read a value of every page: weights mapped from their file count once read
            p.detach().flatten()[::512].float().sum()
        for p in trainer.params:  # the optimizer's state, as it is from step 2 on
            p.grad = torch.zeros_like(p)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    longest = sorted((ids for _, ids in trainer.pool), key=len, reverse=True)[: g.prompts_per_step]
    with phases.phase("rollout", prompt_tokens=len(longest[0])):
        rollout = trainer.backend.generate(
            longest, replace(SamplingParams.of_recipe(g), ignore_eos=True), trainer.generator
        )
        phases.note(completion_tokens=int(rollout.completion_mask.sum()))
    evaluated = recipe.eval.before or recipe.eval.after or recipe.eval.every
    prompts = PromptBuilder.from_config(tokenizer, recipe.data).fitting(held_out) if evaluated else []
    if prompts:
        batch = sorted((ids for _, ids in prompts), key=len, reverse=True)[: recipe.eval.batch_size]
        budget = recipe.eval.max_new_tokens or g.max_new_tokens
        with phases.phase("evaluation", prompts=len(batch), examples=len(prompts)):
            trainer.backend.generate(batch, SamplingParams(budget, greedy=True, ignore_eos=True))
    advantages = torch.tensor([1.0 - 2 * (row % 2) for row in range(rollout.completion_ids.shape[0])])
    for micro_batch in candidates(recipe):
        trainer.policy_update.cfg = g.model_copy(update={"micro_batch_size": micro_batch})
        for _ in range(repeats):
            with phases.phase("update", micro_batch=micro_batch):
                trainer.learn(rollout, advantages)


def main(recipe_file: str, report: str, repeats: str = "1") -> None:
    from thinktune.allocator import keep_freed_memory
    from thinktune.cli import user_errors
    from thinktune.models import pick_device

    keep_freed_memory()  # as thinktune train does
    recipe = Recipe.model_validate_json(Path(recipe_file).read_text())
    if recipe.run.threads:
        torch.set_num_threads(recipe.run.threads)
    torch.manual_seed(recipe.train.seed)
    device = pick_device(recipe.model.device)
    meter = MemoryMeter(device)
    # 90% of what is free plus what this process holds already (the budget is the whole process's): the rest is
    # the OS's and the parent's, so the watchdog stops the process before the kernel's out-of-memory killer would
    budget = recipe.run.memory_budget_gb or 0.9 * (free_memory_gb(str(device)) + meter.current())
    phases = Phases(Path(report), meter, budget)
    phases.emit({"budget_gb": budget, "device": str(device), "runtime_gb": meter.current()})
    phases.enforce(device)
    try:
        worst_case(recipe, phases, int(repeats))
    except user_errors() as err:
        phases.emit({"error": str(err)})


if __name__ == "__main__":
    main(*sys.argv[1:4])
