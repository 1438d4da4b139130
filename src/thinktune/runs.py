"""Run directory layout, checkpoints and resume.

runs/<name>/
  recipe.yaml          the resolved recipe
  sft/                 the fine-tuned model of the sft stage (plain HF folder), GRPO's starting point
  pairs.jsonl          preference pairs (pairs stage), one per line with provenance
  reward_model/        the Bradley-Terry reward model (reward_model stage), HF or peft folder
  metrics.jsonl        one line per step
  samples.jsonl        a few completions per step
  eval_before.json     held-out metrics and completions of the starting model
  eval_after.json      the same for the trained model
  eval_step<N>.json    the same every eval.every steps
  eval_curve.jsonl     held-out metrics by step: before (0), every eval.every steps, after
  comparison.md        the before/after table
  checkpoint/          trainable weights + optimizer + RNG, for --resume
  final/               the trained adapter (peft) or model (transformers), loadable without thinktune
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from thinktune.config import Recipe, dump_recipe


class RunError(RuntimeError):
    pass


# What each stage leaves in a run directory; finding them means the stage already ran there. Other files (the
# pairs written by `thinktune pairs`, a reward model) are inputs a later stage may use.
STAGE_OUTPUTS = {
    "sft": ("sft", "sft_metrics.jsonl", "eval_base.json"),
    "pairs": ("pairs.jsonl",),
    "reward_model": ("reward_model", "reward_model_metrics.jsonl"),
    "grpo": ("metrics.jsonl", "checkpoint", "final"),
}


class RunDir:
    """The run directory of ``recipe``, for the stages about to run (default: the recipe's ``stages``).

    A fresh run refuses a directory that already holds the outputs of those stages; ``resume`` needs at least one.
    """

    def __init__(self, recipe: Recipe, resume: bool = False, stages: list[str] | None = None):
        self.path = Path(recipe.run.output_dir) / recipe.run.name
        self.checkpoint = self.path / "checkpoint"
        outputs = [self.path / name for stage in stages or recipe.stages for name in STAGE_OUTPUTS[stage]]
        done = any(path.exists() for path in outputs)
        if done and not resume:
            raise RunError(
                f"run directory {self.path} already holds a run; pass --resume to continue it, or set "
                f"run.name=<new name>"
            )
        if resume and not done:
            raise RunError(f"--resume: {self.path} holds nothing to resume from")
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "recipe.yaml").write_text(dump_recipe(recipe))

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, payload: dict) -> None:
        self.file(name).write_text(json.dumps(payload, indent=1))

    def read_json(self, name: str) -> dict | None:
        path = self.file(name)
        return json.loads(path.read_text()) if path.is_file() else None

    def save_checkpoint(self, step: int, model, optimizer, scheduler, generator: torch.Generator, sampler=None) -> None:
        """Trainable weights (LoRA or full), optimizer and scheduler state, every RNG and the prompt sampler's
        position and pass rates; written atomically."""
        trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
        state = {
            "step": step,
            "trainable": trainable,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": {
                "python": random.getstate(),
                "torch": torch.get_rng_state(),
                "sampler": generator.get_state(),
            },
            "prompt_sampler": sampler.state_dict() if sampler is not None else None,
        }
        self.checkpoint.mkdir(parents=True, exist_ok=True)
        partial = self.checkpoint / "state.pt.partial"
        torch.save(state, partial)
        partial.replace(self.checkpoint / "state.pt")

    def load_checkpoint(self, model, optimizer, scheduler, generator: torch.Generator, sampler=None) -> int:
        """Restore a checkpoint in place; return the number of steps already done."""
        state = torch.load(self.checkpoint / "state.pt", weights_only=False)
        missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in state["trainable"]]
        if missing:
            raise RunError(
                f"checkpoint does not match the model: no weights for {missing[0]} (and {len(missing) - 1} more)"
            )
        model.load_state_dict(state["trainable"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        random.setstate(state["rng"]["python"])
        torch.set_rng_state(state["rng"]["torch"])
        generator.set_state(state["rng"]["sampler"])
        if sampler is not None and state.get("prompt_sampler"):
            sampler.load_state_dict(state["prompt_sampler"])
        return state["step"]
