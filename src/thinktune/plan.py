"""``thinktune plan``: one worst-case GRPO step, measured before the run, against a memory budget.

The worst case the recipe can produce: its ``prompts_per_step`` longest training prompts, ``group_size`` completions
each, every one forced to ``grpo.max_new_tokens`` (end-of-sequence ignored), and an update on all of them (each row
gets an advantage of +1 or -1, so none is skipped; the KL term as the recipe has it), with
the optimizer's state already allocated, as from step 2 on. Then one batch of the evaluation, greedy and at full
length. Rewards are not run: a learned reward model's weights come on top of the figure.

It runs in a separate process (:mod:`thinktune.worst_case`), so the run starts from a clean slate and the figure
is that process's own high-water mark: peak resident memory (RSS) on the CPU, the allocator's peak reserved memory
on CUDA (the CUDA context, typically 0.5 GB, comes on top). The budget, ``run.memory_budget_gb`` or else 90% of
what the device has free, is enforced while measuring: on the CPU a watchdog stops the process at the first sample
above it; on CUDA the allocator is capped there. With ``run.memory_budget_gb`` set, every micro-batch size from 1
up to the step's rows is measured, in that order, and the largest that fits is taken.

    plan = measure(recipe)          # Plan: peaks and times, per micro-batch size
    plan.choose(recipe)             # the micro-batch size; a ConfigError naming what to change when none fits
    print("\\n".join(plan.lines(recipe)))
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from thinktune.config import ConfigError, Recipe
from thinktune.console import console

GB = 1e9
EXCEEDED = 3  # the measuring process's exit status when it crossed the budget


# ------------------------------------------------------------------ what the device has
def free_memory_gb(device: str) -> float:
    """What ``device`` ("cpu", "cuda", "cuda:1") has free now, in GB: the kernel's MemAvailable, or less where a
    cgroup limits this process; on CUDA, the device's free memory."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0] / GB
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        free = int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # not Linux: the OS's own total
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cgroups = (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"))
    for limit, usage in cgroups:  # v2, v1
        try:
            cap = Path("/sys/fs/cgroup", limit).read_text().strip()
            if cap != "max":
                free = min(free, int(cap) - int(Path("/sys/fs/cgroup", usage).read_text()))
        except (OSError, ValueError):
            pass
    return free / GB


# ------------------------------------------------------------------ the result
@dataclass
class Plan:
    """What the measuring process reported: peaks in GB and times in seconds, per phase and micro-batch size."""

    budget_gb: float
    device: str
    loaded_gb: float = 0.0  # after loading the model and allocating the optimizer's state
    rollout: dict = field(default_factory=dict)  # {"seconds", "peak_gb"}
    evaluation: dict = field(default_factory=dict)  # {"seconds", "peak_gb", "prompts", "examples"}; empty: none
    updates: dict[int, dict] = field(default_factory=dict)  # micro-batch size -> {"seconds", "peak_gb"}
    exceeded: dict | None = None  # {"phase", "micro_batch", "gb"}: where the budget was crossed
    runtime_gb: float = 0.0  # the measuring process before loading anything (Python, torch; on CUDA nothing)
    prompt_tokens: int = 0  # the longest training prompt's
    estimate_gb: float | None = None  # thinktune memory's figure for these prompts (tensors only, no runtime)

    def peak_gb(self, micro_batch: int) -> float:
        """The step's peak at ``micro_batch``: the largest of loading, sampling, evaluating and the update."""
        phases = [self.loaded_gb, self.rollout.get("peak_gb", 0.0), self.evaluation.get("peak_gb", 0.0)]
        return max(*phases, self.updates[micro_batch]["peak_gb"])

    def fitting(self) -> list[int]:
        """The micro-batch sizes measured within the budget, smallest first."""
        return sorted(m for m in self.updates if self.peak_gb(m) <= self.budget_gb)

    def choose(self, recipe: Recipe) -> int:
        """The micro-batch size to train with: the largest measured that fits (without ``run.memory_budget_gb``
        only the recipe's own is measured); a :class:`ConfigError` naming what to change when none fits.

        >>> peaks = {1: {"peak_gb": 2.5}, 2: {"peak_gb": 3.9}, 4: {"peak_gb": 4.4}}
        >>> Plan(4.0, "cpu", loaded_gb=1.0, rollout={"peak_gb": 2.0}, updates=peaks).choose(Recipe())
        2
        """
        fitting = self.fitting()
        if not fitting:
            raise ConfigError(self.refusal(recipe))
        return fitting[-1]

    def refusal(self, recipe: Recipe) -> str:
        """Why the run cannot start, and the settings that lower its peak (those not set already)."""
        where = self.exceeded or {}
        phase = where.get("phase", "update")
        needed = where.get("gb") or max((self.peak_gb(m) for m in self.updates), default=self.loaded_gb)
        m, t, fixes = recipe.model, recipe.train, []
        if phase == "update" and not t.gradient_checkpointing:
            fixes.append("train.gradient_checkpointing=true")
        g = recipe.grpo
        tried = [*self.updates, *([where["micro_batch"]] if where.get("micro_batch") else [])]
        # the full-length rows the smallest pass tried held: a token budget may have let in fewer than its micro-batch
        rows = g.model_copy(update={"micro_batch_size": min(tried or [g.micro_batch_size])}).full_length_rows_a_pass()
        if phase == "update" and rows > 1:
            if g.micro_batch_tokens is None:  # a budget: the same worst case, and short completions still many a pass
                fixes.append(f"grpo.micro_batch_size={rows // 2}")
            fixes.append(f"grpo.micro_batch_tokens={rows // 2 * g.max_new_tokens}")
        if phase != "evaluation" and m.finetune == "lora" and m.quantize == "none":
            fixes.append("model.quantize=nf4")
        if phase == "loading" and m.finetune == "full":
            fixes += ["train.optimizer=adamw_8bit"] * (t.optimizer == "adamw") + ["model.finetune=lora"]
        fixes += {"rollout": ["a lower grpo.max_new_tokens or grpo.prompts_per_step"],
                  "evaluation": ["a lower eval.batch_size"], "loading": ["a smaller model"]}.get(phase, [])  # fmt: skip
        budget = "run.memory_budget_gb" if recipe.run.memory_budget_gb else f"90% of the free memory on {self.device}"
        return (
            f"plan: the worst-case GRPO step needs more than {needed:.2f} GB in its {phase} phase, over the "
            f"{self.budget_gb:.2f} GB budget ({budget}); try " + ", ".join(fixes)
        )

    def step_seconds(self, micro_batch: int) -> float:
        return self.rollout["seconds"] + self.updates[micro_batch]["seconds"]

    def projected_seconds(self, recipe: Recipe, micro_batch: int) -> dict[str, float]:
        """The run's wall-clock, at most (every completion at full length): GRPO steps and the evaluations.

        >>> p = Plan(9, "cpu", rollout={"seconds": 2.0}, updates={8: {"seconds": 1.0}},
        ...          evaluation={"seconds": 4.0, "examples": 100, "prompts": 50})
        >>> p.projected_seconds(Recipe.model_validate({"train": {"steps": 10}, "eval": {"every": 5}}), 8)
        {'grpo steps': 30.0, 'evaluations': 32.0}
        """
        parts = {"grpo steps": recipe.train.steps * self.step_seconds(micro_batch)}
        if self.evaluation:
            e = recipe.eval
            count = e.before + e.after + (recipe.train.steps // e.every if e.every else 0)
            batches = math.ceil(self.evaluation["examples"] / self.evaluation["prompts"])
            parts["evaluations"] = count * batches * self.evaluation["seconds"]
        return parts

    def record(self, recipe: Recipe) -> dict:
        """What ``plan.json`` of the run keeps: every measurement, the micro-batch trained with, the projection."""
        chosen = self.choose(recipe)
        return {**asdict(self), "micro_batch": chosen, "peak_gb_at_micro_batch": self.peak_gb(chosen),
                "projected_seconds": self.projected_seconds(recipe, chosen)}  # fmt: skip

    def lines(self, recipe: Recipe) -> list[str]:
        """What ``thinktune plan`` prints."""
        g = recipe.grpo
        shape = f"the {g.prompts_per_step} longest prompts x {g.group_size} completions x {g.max_new_tokens} new tokens"
        if g.micro_batch_tokens:
            shape += f", at most {g.micro_batch_tokens} tokens a pass ({g.full_length_rows_a_pass()} rows)"
        out = [f"worst case: {shape}, every completion trained on; {self.device}, budget {self.budget_gb:.2f} GB"]
        if self.loaded_gb:
            out.append(f"{'model + optimizer state':<28} {self.loaded_gb:7.2f} GB")
        if self.rollout:
            out.append(f"{'sampling':<28} {self.rollout['peak_gb']:7.2f} GB {self.rollout['seconds']:8.1f} s")
        if self.evaluation:
            e = self.evaluation
            out.append(
                f"{'evaluation batch':<28} {e['peak_gb']:7.2f} GB {e['seconds']:8.1f} s  ({e['prompts']} prompts)"
            )
        for m, u in sorted(self.updates.items()):
            verdict = "fits" if self.peak_gb(m) <= self.budget_gb else "over budget"
            out.append(f"{f'update, micro-batch {m}':<28} {self.peak_gb(m):7.2f} GB {u['seconds']:8.1f} s  {verdict}")
        if self.exceeded:
            x = self.exceeded
            size = f", micro-batch {x['micro_batch']}" if x.get("micro_batch") else ""
            out.append(f"{x['phase'] + size:<28} > {x['gb']:5.2f} GB  over budget: stopped there")
        if self.estimate_gb is not None:
            total = self.estimate_gb + self.runtime_gb
            prompts = f"{self.prompt_tokens}-token" if self.prompt_tokens else "data.max_prompt_tokens"
            out.append(f"{'thinktune memory estimate':<28} {self.estimate_gb:7.2f} GB  + runtime {self.runtime_gb:.2f} "
                       f"GB = {total:.2f} GB ({prompts} prompts)")  # fmt: skip
        fitting = self.fitting()
        if fitting:
            m = self.choose(recipe)
            parts = self.projected_seconds(recipe, m)
            detail = ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in parts.items())
            out.append(f"micro-batch {m}: peak {self.peak_gb(m):.2f} GB, worst-case step {self.step_seconds(m):.1f} s; "
                       f"the run at most {sum(parts.values()) / 60:.1f} min ({detail})")  # fmt: skip
            if set(recipe.stages) - {"grpo"}:
                out.append(f"not measured: the {', '.join(s for s in recipe.stages if s != 'grpo')} stage(s)")
        return out


def rows_per_step(recipe: Recipe) -> int:
    return recipe.grpo.prompts_per_step * recipe.grpo.group_size


def candidates(recipe: Recipe) -> list[int]:
    """The micro-batch sizes to measure: the recipe's own, or with a budget set 1, 2, 4, ... up to the step's rows.

    >>> candidates(Recipe.model_validate({"grpo": {"group_size": 6, "prompts_per_step": 2},
    ...                                   "run": {"memory_budget_gb": 8}}))
    [1, 2, 4, 8, 12]
    """
    rows = rows_per_step(recipe)
    if not recipe.run.memory_budget_gb:
        return [min(recipe.grpo.micro_batch_size, rows)]
    sizes = [2**i for i in range(rows.bit_length()) if 2**i < rows]
    return [*sizes, rows]


# ------------------------------------------------------------------ the parent's side
def measure(recipe: Recipe, repeats: int = 1) -> Plan:
    """Run the worst-case step in a separate process and return what it measured; with ``repeats`` > 1 each update
    runs that many times, and its time is the last one's (the first pays for touching memory the first time)."""
    with tempfile.TemporaryDirectory(prefix="thinktune-plan-") as scratch:
        recipe_file, report = Path(scratch, "recipe.json"), Path(scratch, "plan.jsonl")
        recipe_file.write_text(recipe.model_dump_json())
        command = [sys.executable, "-m", "thinktune.worst_case", str(recipe_file), str(report), str(repeats)]
        with console.status("plan: measuring a worst-case step in a separate process"):
            done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines = [json.loads(line) for line in report.read_text().splitlines()] if report.is_file() else []
    if done.returncode < 0:  # SIGKILL: the kernel's out-of-memory killer, before the watchdog saw the budget crossed
        raise ConfigError(f"plan: the measuring process was killed (signal {-done.returncode}), most likely out of "
                          "memory; set run.memory_budget_gb below what the machine has free")  # fmt: skip
    if done.returncode not in (0, EXCEEDED) or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise ConfigError(f"plan: the measuring process failed (exit {done.returncode}):\n{tail}")
    plan = Plan(budget_gb=lines[0]["budget_gb"], device=lines[0]["device"], runtime_gb=lines[0]["runtime_gb"])
    for line in lines:
        if "error" in line:
            raise ConfigError(f"plan: {line['error']}")
        if line.get("phase") == "loading":
            plan.loaded_gb = line["peak_gb"]
        elif line.get("phase") in ("rollout", "evaluation"):
            setattr(plan, line["phase"], {k: v for k, v in line.items() if k != "phase"})
            plan.prompt_tokens = line.get("prompt_tokens", plan.prompt_tokens)
        elif line.get("phase") == "update":
            earlier = plan.updates.get(line["micro_batch"], {}).get("peak_gb", 0.0)
            plan.updates[line["micro_batch"]] = {"seconds": line["seconds"], "peak_gb": max(earlier, line["peak_gb"])}
        elif "exceeded" in line:
            plan.exceeded = line["exceeded"]
    plan.estimate_gb = estimate_gb(recipe, plan.prompt_tokens or None)
    return plan


def estimate_gb(recipe: Recipe, prompt_tokens: int | None = None) -> float | None:
    """``thinktune memory``'s total for the recipe (prompts of ``prompt_tokens``, default the budget), or None when
    the model's config cannot be read."""
    from transformers import AutoConfig

    from thinktune.memory import Architecture, estimate
    from thinktune.models import resolve_model

    try:
        arch = Architecture.of(AutoConfig.from_pretrained(resolve_model(recipe.model.name)))
        return estimate(recipe, arch, prompt_tokens)["total"]
    except (OSError, ValueError, AttributeError):
        return None


def before_training(recipe: Recipe, device: str) -> tuple[Recipe, Plan | None]:
    """The plan ``thinktune train`` runs before step 1 (``run.plan``): the recipe to train (with the plan's
    micro-batch size when ``run.memory_budget_gb`` is set) and the plan, or None when it was not measured."""
    if recipe.run.plan is False or "grpo" not in recipe.stages:
        return recipe, None
    if recipe.run.plan == "auto" and not recipe.run.memory_budget_gb:
        estimated, free = estimate_gb(recipe), free_memory_gb(device)
        if estimated is not None and estimated < free / 2:
            console.print(f"plan: thinktune memory estimates {estimated:.2f} GB, under half of the {free:.1f} GB free "
                          "on the device; not measured (run.plan=true measures it)")  # fmt: skip
            return recipe, None
    plan = measure(recipe)
    for line in plan.lines(recipe):
        console.print(f"plan: {line}")
    chosen = plan.choose(recipe)
    if chosen != recipe.grpo.micro_batch_size and recipe.run.memory_budget_gb:
        console.print(f"plan: grpo.micro_batch_size={chosen}, the largest that fits run.memory_budget_gb")
        recipe = recipe.model_copy(update={"grpo": recipe.grpo.model_copy(update={"micro_batch_size": chosen})})
    return recipe, plan


def planned(recipe: Recipe) -> Recipe:
    """A resumed run under ``run.memory_budget_gb`` trains on with the micro-batch size its plan chose (kept in the
    run folder's ``recipe.yaml``), not the one the recipe file says."""
    from thinktune.run_dir import saved_recipe

    grpo = (saved_recipe(recipe.run.path) or {}).get("grpo")
    size = grpo.get("micro_batch_size") if isinstance(grpo, dict) else None
    if not recipe.run.memory_budget_gb or not isinstance(size, int):
        return recipe  # nothing planned, or unreadable: the resume check reports it
    return recipe.model_copy(update={"grpo": recipe.grpo.model_copy(update={"micro_batch_size": size})})
