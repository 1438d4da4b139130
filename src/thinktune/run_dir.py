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
  checkpoint/          GRPO's state.pt (weights, optimizer, schedule, RNGs, prompt sampler, recipe), then
                       previous.pt, previous-2.pt, … (run.keep_checkpoints in all); sft_checkpoint/ and
                       reward_model_checkpoint/ likewise
  resume_changes.jsonl safe recipe changes made on --resume
  final/               the trained adapter (peft) or model (transformers), loadable without thinktune

Model folders and checkpoints are written under a temporary name and renamed when whole.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
from pathlib import Path

import torch
import yaml

from thinktune.config import RESUME_SAFE, Recipe, tagged_fields
from thinktune.console import console
from thinktune.distributed import SINGLE, Ranks
from thinktune.outputs import RunError, RunLock, WriteError, writing
from thinktune.recipe import dump_recipe

# What each stage leaves in a run directory; finding them means the stage already ran there. Other files (the
# pairs written by `thinktune pairs`, a reward model) are inputs a later stage may use.
STAGE_OUTPUTS = {
    "sft": ("sft", "sft_metrics.jsonl", "sft_checkpoint", "eval_base.json"),
    "pairs": ("pairs.jsonl",),
    "reward_model": ("reward_model", "reward_model_metrics.jsonl", "reward_model_checkpoint"),
    "grpo": ("metrics.jsonl", "checkpoint", "final"),
}


def stage_outputs(recipe: Recipe, stages: list[str] | None = None) -> list[Path]:
    """The outputs of ``stages`` (default: the recipe's) in the recipe's run directory that exist."""
    folder = recipe.run.path
    return [
        folder / name for stage in stages or recipe.stages for name in STAGE_OUTPUTS[stage] if (folder / name).exists()
    ]


def saved_recipe(folder: Path) -> dict | None:
    """The recipe tree in ``folder/recipe.yaml``; None when there is none or it cannot be read (the checkpoint's own
    recipe is checked when it loads)."""
    path = Path(folder) / "recipe.yaml"
    try:
        tree = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None
    return tree if isinstance(tree, dict) else None


class RunDir:
    """The run directory of ``recipe``, for the stages about to run (default: the recipe's ``stages``).

    A fresh run refuses a directory that already holds the outputs of those stages; ``resume`` needs at least one.
    """

    def __init__(self, recipe: Recipe, resume: bool = False, stages: list[str] | None = None, attach: bool = False):
        """``attach``: the directory another process (process 0 of a multi-process run) has just set up."""
        self.path = recipe.run.path
        self.recipe = recipe
        self.checkpoint = self.path / "checkpoint"
        self.attached = attach
        self.lock = RunLock(self.path)
        if attach:
            return
        self.lock.acquire()  # before looking: of two processes started together, one is refused here
        try:
            done = bool(stage_outputs(recipe, stages))
            if done and not resume:
                raise RunError(
                    f"run directory {self.path} already holds a run; pass --resume to continue it, or set "
                    f"run.name=<new name>"
                )
            if resume and not done:
                raise RunError(f"--resume: {self.path} holds nothing to resume from")
            saved = self.saved_recipe() if resume and self.has_any_checkpoint() else None
            if saved is not None:  # the check the checkpoint will make, before anything is rewritten
                check_resumable({**saved, "stages": recipe.stages}, recipe, None, None, quiet=True)
            self.write_recipe(recipe)
        except BaseException:
            self.lock.release()
            raise

    def write_recipe(self, recipe: Recipe) -> None:
        """``recipe.yaml``: the recipe the run was started (or last resumed, or planned) with."""
        self.recipe = recipe
        with writing(self.path / "recipe.yaml"):
            (self.path / "recipe.yaml").write_text(dump_recipe(recipe))

    def close(self) -> None:
        """Let another process have the folder (the lock also ends with this process, however it ends)."""
        self.lock.release()

    def saved_recipe(self) -> dict | None:
        """The recipe the run was started (or last resumed) with, as written in ``recipe.yaml``."""
        return saved_recipe(self.path)

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, payload: dict) -> None:
        with writing(self.file(name)):
            self.file(name).write_text(json.dumps(payload, indent=1))

    def read_json(self, name: str) -> dict | None:
        path = self.file(name)
        return json.loads(path.read_text()) if path.is_file() else None

    def save_checkpoint(self, step: int, recipe: Recipe, model, parts: dict, stage: str = "grpo") -> None:
        """A stage's training state after ``step``: trainable weights (LoRA or full), every ``part``'s
        ``state_dict()`` (optimizer, schedule, data order, sampling RNG…), the global RNGs and the recipe trained
        with. Written whole to ``<stage folder>/state.pt.partial`` first; then the older ones move down a place
        (``state.pt`` → ``previous.pt`` → ``previous-2.pt`` …, ``run.keep_checkpoints`` in all) and the new one
        becomes ``state.pt``. A kill between two renames leaves every file whole, at worst one short."""
        folder = self.checkpoint_folder(stage)
        state = {
            "step": step,
            "recipe": recipe.model_dump(mode="json"),
            # under fsdp the trainable weights are in the "shards" part's folder
            "trainable": {}
            if "shards" in parts
            else {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
            "parts": {name: part.state_dict() for name, part in parts.items()},
            "rng": {
                "python": random.getstate(),
                "torch": torch.get_rng_state(),
                **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
            },
        }
        partial, latest = folder / "state.pt.partial", folder / "state.pt"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(state, partial)
        except (OSError, RuntimeError) as err:  # torch reports a full disk as RuntimeError
            if partial.is_file():
                partial.unlink()
            raise WriteError(partial, err, note=f": the step-{step} checkpoint; the previous one is intact") from None
        names = checkpoint_names(recipe.run.keep_checkpoints)
        for older in sorted(folder.glob("previous*.pt")):
            if older.name not in names:  # kept when run.keep_checkpoints was larger
                older.unlink()
        for newer, older in reversed(list(itertools.pairwise(names))):
            if (folder / newer).is_file():
                (folder / newer).replace(folder / older)
        partial.replace(latest)
        for old in sorted(folder.glob("shards-*"), key=lambda p: int(p.name.partition("-")[2]))[: -len(names)]:
            shutil.rmtree(old, ignore_errors=True)  # the newest run.keep_checkpoints: those the kept files name

    def checkpoint_folder(self, stage: str = "grpo") -> Path:
        return self.checkpoint if stage == "grpo" else self.file(f"{stage}_checkpoint")

    def has_any_checkpoint(self) -> bool:
        return any(self.has_checkpoint(stage) for stage in ("sft", "reward_model", "grpo"))

    def has_checkpoint(self, stage: str = "grpo") -> bool:
        return bool(self.checkpoint_files(stage))

    def checkpoint_files(self, stage: str = "grpo") -> list[Path]:
        """The checkpoints of ``stage`` on disk, newest first."""
        folder = self.checkpoint_folder(stage)
        older = sorted(folder.glob("previous*.pt"), key=lambda p: int(p.stem.partition("-")[2] or 1))
        return [p for p in [folder / "state.pt", *older] if p.is_file()]

    def read_checkpoint(self, stage: str = "grpo") -> dict:
        """The newest readable checkpoint; an unreadable one is reported and the one before it used."""
        problems = []
        for path in self.checkpoint_files(stage):
            try:
                # tensors and plain data only: loading runs no code; on the CPU first, so a GPU run's checkpoint
                # opens on any machine (the optimizer moves its state to its parameters' device)
                state = torch.load(path, weights_only=True, map_location="cpu")
            except Exception as err:  # noqa: BLE001 - any unreadable file: say so and fall back
                problems.append(f"{path} is unreadable ({type(err).__name__}: {str(err)[:120]})")
                console.print(f"[yellow]{problems[-1]}; trying the checkpoint before it[/]")
                continue
            return state
        raise RunError("; ".join(problems) or f"no checkpoint in {self.checkpoint_folder(stage)}")

    def load_checkpoint(self, recipe: Recipe, model, parts: dict, stage: str = "grpo") -> int:
        """Restore the newest readable checkpoint of ``stage`` in place; return the number of steps done.

        A recipe changed in a way that changes training since the checkpoint stops with the changes listed;
        safe changes are printed and recorded in ``resume_changes.jsonl``.
        """
        state = self.read_checkpoint(stage)
        record = None if self.attached else self.file("resume_changes.jsonl")
        check_resumable(state["recipe"], recipe, state["step"], record)
        check_layout(state, parts)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        missing = [] if "shards" in parts else [n for n in trainable if n not in state["trainable"]]  # fsdp: shards
        if missing:
            raise RunError(
                f"checkpoint does not match the model: no weights for {missing[0]} (and {len(missing) - 1} more)"
            )
        try:
            model.load_state_dict(state["trainable"], strict=False)
        except RuntimeError as err:
            first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err)[:200])
            raise RunError(f"checkpoint does not match the model: {first}") from None
        for name, part in parts.items():
            part.load_state_dict(state["parts"][name])
        random.setstate(state["rng"]["python"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():  # dropout and any sampling on the GPU
            torch.cuda.set_rng_state_all(state["rng"]["cuda"][: torch.cuda.device_count()])
        return state["step"]


def check_layout(state: dict, parts: dict) -> None:
    """A checkpoint written under fsdp (its weights in shards) resumes under fsdp, on any number of processes; one
    with whole weights (one process, ddp) resumes without fsdp. Otherwise one line says how to resume it."""
    written = state["parts"].get("shards")
    if written and "shards" not in parts:
        raise RunError(
            f"--resume: the checkpoint (step {state['step']}) holds FSDP shards written by {written['processes']} "
            "processes: resume it under torchrun with train.distributed=fsdp"
        )
    if "shards" in parts and not written:
        raise RunError(
            f"--resume: the checkpoint (step {state['step']}) holds whole weights (one process or ddp): resume it "
            "with train.distributed=ddp, or on one process"
        )


class GeneratorState:
    """A ``torch.Generator`` (on any device) as a checkpoint part (``state_dict`` / ``load_state_dict``); with
    several processes, every process's generator, each restored to its own."""

    def __init__(self, generator: torch.Generator, ranks: Ranks = SINGLE):
        self.generator, self.ranks = generator, ranks
        # Gathered now, while every process builds its checkpoint parts; only process 0 writes them.
        self.by_rank = ranks.gather(generator.get_state())

    def state_dict(self) -> dict:
        return {"state": self.generator.get_state(), "ranks": self.by_rank}

    def load_state_dict(self, state: dict) -> None:
        by_rank = state.get("ranks") or [state["state"]]
        self.generator.set_state(by_rank[self.ranks.rank] if self.ranks.rank < len(by_rank) else state["state"])


def checkpoint_names(keep: int) -> list[str]:
    """File names of ``keep`` checkpoints, newest first.

    >>> checkpoint_names(3)
    ['state.pt', 'previous.pt', 'previous-2.pt']
    """
    return ["state.pt", "previous.pt", *(f"previous-{i}.pt" for i in range(2, keep))][:keep]


# Fields a resumed run may change (tagged RESUME_SAFE in the schema): what is evaluated and where things go, not
# what is trained, nor what the before/after comparison depends on.
SAFE_TO_CHANGE = frozenset(tagged_fields(RESUME_SAFE))


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"grpo": {"beta": 0.0}}`` -> ``{"grpo.beta": 0.0}``.

    >>> flatten({"grpo": {"beta": 0.0, "loss": "token"}, "stages": ["grpo"]})
    {'grpo.beta': 0.0, 'grpo.loss': 'token', 'stages': ['grpo']}
    """
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key != "task_config" and key != "args":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _comparable(tree: dict) -> dict:
    """The recipe as today's schema says it, for comparing: without each reward's ``timeout`` (a bound on waiting,
    not part of what is trained; absent from runs started before it existed), and with a ``grpo.scale_rewards``
    boolean of an older run read as what it meant (true: group, false: none).

    >>> _comparable({"grpo": {"scale_rewards": True}, "rewards": [{"name": "format", "timeout": 60.0}]})
    {'grpo': {'scale_rewards': 'group'}, 'rewards': [{'name': 'format'}]}
    """
    rewards = [{k: v for k, v in r.items() if k != "timeout"} for r in tree.get("rewards", [])]
    grpo = dict(tree.get("grpo", {}))
    if isinstance(grpo.get("scale_rewards"), bool):
        grpo["scale_rewards"] = "group" if grpo["scale_rewards"] else "none"
    return {**tree, "grpo": grpo, "rewards": rewards}


def check_resumable(saved: dict, recipe: Recipe, step: int | None, record: Path | None, quiet: bool = False) -> None:
    """Stop when the recipe changed what training does since the checkpoint (listing old -> new); record safe
    changes (``quiet``: only check). More steps are safe only with a constant schedule (a decaying one would
    jump)."""
    old, new = flatten(_comparable(saved)), flatten(_comparable(recipe.model_dump(mode="json")))
    changed = {
        key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)
    }
    if not changed:
        return
    safe = {key for key in changed if key in SAFE_TO_CHANGE}
    if "train.steps" in safe and new.get("train.lr_schedule") != "constant":
        safe.discard("train.steps")
    unsafe = [f"{key}: {a!r} -> {b!r}" for key, (a, b) in changed.items() if key not in safe]
    if unsafe:
        raise RunError(
            "--resume: the recipe changed what training does since "
            + (f"the checkpoint (step {step}): " if step is not None else "the run started: ")
            + "; ".join(unsafe)
            + ". Resume with the recipe as it was, or start a new run (run.name=<new name>)"
        )
    if quiet:
        return
    notes = {key: list(changed[key]) for key in sorted(safe)}
    console.print("resuming with changed settings: " + "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in notes.items()))
    if record is not None:  # None: another process (process 0) records them
        with record.open("a") as f:
            f.write(json.dumps({"step": step, "changed": notes}) + "\n")
