"""What both systems run: the same model, prompts, rewards, group size, batch, completion length and steps.

The workload is the demo recipe's task (1-2 digit arithmetic, XML format with one worked example, format +
task-score rewards) at the issue's shape: 4 prompts x 8 completions per step, up to 128 completion tokens,
temperature 1.0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
GROUP, PROMPTS_PER_STEP, MAX_NEW_TOKENS, LEARNING_RATE, TEMPERATURE = 8, 4, 128, 2e-4, 1.0


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # "smollm2-135m-instruct" or "tiny"
    finetune: str  # "lora" or "full"
    steps: int  # the first step is warm-up and not counted
    reward: str | None = None  # replaces the demo's rewards when set


CASES = {
    # 3 measured steps a case: lengths vary a lot, and TRL's steps after its second run about half as long (LoRA:
    # one measured step read 6.61x against TRL's fastest, three 5.16x; README "Speed against TRL")
    "smollm2-lora": Case("smollm2-lora", "smollm2-135m-instruct", "lora", 4),
    "smollm2-full": Case("smollm2-full", "smollm2-135m-instruct", "full", 4),
    "tiny-full": Case("tiny-full", "tiny", "full", 4, reward="workload:letter_share"),
}


def case_of(name: str, steps: int = 0) -> Case:
    """The named case, with ``steps`` steps when given (``bench.py --steps``).

    >>> case_of("smollm2-lora", 2).steps, case_of("smollm2-lora").steps
    (2, 4)
    """
    return replace(CASES[name], steps=steps) if steps else CASES[name]


def tiny_model(folder: Path) -> str:
    """A randomly initialised 4-layer model with SmolLM2's tokenizer and shape family (about 7M parameters).

    It never emits end-of-sequence, so every completion runs the full 128 tokens: a pure-throughput case.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from thinktune.models import load_tokenizer, resolve_model

    if (folder / "config.json").is_file():
        return str(folder)
    source = resolve_model("smollm2-135m-instruct")
    config = AutoConfig.from_pretrained(source)
    config.update(
        {
            "hidden_size": 128,
            "intermediate_size": 384,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
        }
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    load_tokenizer(source).save_pretrained(folder)
    return str(folder)


def letter_share(prompts, completions, **_):
    """Share of letters among a completion's characters.

    The tiny model writes random tokens that never score on the demo's rewards; every group would be flat and
    thinktune would (rightly) train on nothing. Random text gets a different letter share per completion, so
    every row has an advantage and both systems do the full update.
    """
    return [sum(ch.isalpha() for ch in c) / max(1, len(c)) for c in completions]


def model_path(case: Case, scratch: Path) -> str:
    from thinktune.models import resolve_model

    return tiny_model(scratch / "tiny-model") if case.model == "tiny" else resolve_model(case.model)


def recipe(case: Case, path: str, run_dir: Path, micro_batch: int = 8, overrides: tuple[str, ...] = ()):
    """The demo recipe at the benchmark's shape."""
    from thinktune.config import RewardConfig
    from thinktune.recipe import load_recipe

    r = load_recipe(
        ROOT / "recipes" / "demo.yaml",
        [
            f"model.name={path}",
            f"model.finetune={case.finetune}",
            f"grpo.group_size={GROUP}",
            f"grpo.prompts_per_step={PROMPTS_PER_STEP}",
            f"grpo.max_new_tokens={MAX_NEW_TOKENS}",
            # TRL's default, what its side samples at; the demo recipe's own 0.7 reached thinktune's side
            # until 2026-12-06
            f"grpo.temperature={TEMPERATURE}",
            f"grpo.micro_batch_size={micro_batch}",
            f"train.steps={case.steps}",
            f"train.learning_rate={LEARNING_RATE}",
            "train.warmup_steps=0",
            "data.train_size=200",
            "data.eval_size=0",
            f"run.output_dir={run_dir}",
            f"run.name={case.name}",
            "run.save_every=0",
            *overrides,
        ],
    )
    return r.model_copy(update={"rewards": [RewardConfig(name=case.reward)]}) if case.reward else r


def build_trainer(case: Case, scratch: Path, run_dir: Path, overrides: tuple[str, ...] = ()):
    """thinktune's real trainer on the case, as `thinktune train` would build it: seeded first, as it is (LoRA's
    initial weights come from torch's global generator; unseeded, two runs of one configuration trained apart from
    their first update, until 2026-12-06)."""
    from thinktune.data import load_examples
    from thinktune.grpo.trainer import GRPOTrainer
    from thinktune.pipeline import seed_everything
    from thinktune.run_dir import RunDir
    from thinktune.tracking import make_tracker

    r = recipe(case, model_path(case, scratch), run_dir, overrides=overrides)
    seed_everything(r.train.seed)
    train_set, _, task_dataset = load_examples(r.data)
    run = RunDir(r)
    return GRPOTrainer.from_recipe(r, train_set, task_dataset, run, make_tracker(r.run.report_to, run))


def every_row_trained(trainer):
    """One rollout of ``trainer``'s step and an advantage of +1 or -1 for each row, alternating, so every row trains:
    a fixed update to time one way and another (``pass_size.py``, ``autocast.py``) without the runs drifting apart."""
    rollout = trainer.rollout_round(trainer.recipe.grpo.prompts_per_step).rollout
    advantages = torch.tensor([1.0 - 2 * (row % 2) for row in range(rollout.completion_ids.shape[0])])
    return rollout, advantages


def parameter_count(model) -> dict[str, int]:
    """Matmul parameters (every linear layer incl. a tied LM head, not LoRA's; embeddings are lookups)."""
    linear = sum(
        m.weight.numel() for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in name
    )
    return {"matmul": linear, "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def write_json(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=1))
