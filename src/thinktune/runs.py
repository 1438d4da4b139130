"""Run directory layout, checkpoints and resume.

runs/<name>/
  recipe.yaml          the resolved recipe
  metrics.jsonl        one line per step
  samples.jsonl        a few completions per step
  eval_before.json     held-out metrics and completions of the starting model
  eval_after.json      the same for the trained model
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


# What each command leaves in a run directory; finding them means the command already ran there. Other
# files (pairs.jsonl from `thinktune pairs`, a reward model) are inputs the next command may use.
TRAINING_OUTPUTS = ("metrics.jsonl", "checkpoint", "final", "sft", "sft_metrics.jsonl", "eval_base.json")
REWARD_MODEL_OUTPUTS = ("reward_model", "reward_model_metrics.jsonl")


class RunDir:
    def __init__(self, recipe: Recipe, resume: bool = False, outputs: tuple[str, ...] = TRAINING_OUTPUTS):
        self.path = Path(recipe.run.output_dir) / recipe.run.name
        self.checkpoint = self.path / "checkpoint"
        if any((self.path / name).exists() for name in outputs) and not resume:
            raise RunError(
                f"run directory {self.path} already holds a run; pass --resume to continue it, or set "
                f"run.name=<new name>"
            )
        finished_sft = (self.path / "sft" / "config.json").is_file()
        if resume and not (self.checkpoint / "state.pt").is_file() and not finished_sft:
            raise RunError(f"--resume: {self.checkpoint} has no checkpoint to resume from")
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "recipe.yaml").write_text(dump_recipe(recipe))

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, payload: dict) -> None:
        self.file(name).write_text(json.dumps(payload, indent=1))

    def read_json(self, name: str) -> dict | None:
        path = self.file(name)
        return json.loads(path.read_text()) if path.is_file() else None

    def save_checkpoint(self, step: int, model, optimizer, scheduler, generator: torch.Generator) -> None:
        """Trainable weights (LoRA or full), optimizer and scheduler state, and every RNG; written atomically."""
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
        }
        self.checkpoint.mkdir(parents=True, exist_ok=True)
        partial = self.checkpoint / "state.pt.partial"
        torch.save(state, partial)
        partial.replace(self.checkpoint / "state.pt")

    def load_checkpoint(self, model, optimizer, scheduler, generator: torch.Generator) -> int:
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
        return state["step"]
