"""thinktune from Python: the CLI's commands as functions, for notebooks and scripts.

    import thinktune

    def brevity(prompts, completions, **kwargs):  # TRL's reward signature
        return [1.0 if len(c) < 400 else 0.0 for c in completions]

    recipe = thinktune.load_recipe("recipes/demo.yaml", ["train.steps=20"])
    summary = thinktune.train(recipe, rewards=["format", "task_score", thinktune.reward(brevity, weight=0.2)])
    summary.before["accuracy"], summary.after["accuracy"], summary.model
    thinktune.generate(summary.model, "What is 17 + 25?", recipe=recipe)

A recipe is the same object the CLI reads from YAML; ``rewards=`` replaces its rewards. A reward is a registered
name, an import path ``pkg.module:function``, a Python callable, or :func:`reward` of one with a weight and
bound arguments.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from thinktune.config import ConfigError, Recipe, RewardConfig
from thinktune.jsonl import read_jsonl
from thinktune.recipe import load_recipe as read_recipe

RewardLike = str | Callable | RewardConfig


def load_recipe(source: str | Path | dict | Recipe | None = None, overrides: Iterable[str] = ()) -> Recipe:
    """A recipe from a YAML file, a dict of sections, an existing recipe or the defaults (None), with
    ``key.sub=value`` overrides applied.

    >>> load_recipe({"train": {"steps": 5}}, ["grpo.group_size=4"]).train.steps
    5
    """
    if isinstance(source, Recipe):
        source = source.model_dump(mode="json")
    return read_recipe(source, list(overrides))


def reward(fn: str | Callable, weight: float = 1.0, timeout: float | None = 60.0, **args) -> RewardConfig:
    """A reward for a recipe: ``fn`` (a name, ``pkg.module:function`` or a callable), its weight in the summed
    reward, the seconds one call may take (``timeout``, None: unbounded) and keyword arguments bound to it.

    A callable importable by its module and name is recorded that way, so the run's ``recipe.yaml`` can be
    resumed from the command line; any other (a notebook's function, a lambda) is registered in this process
    under ``python:<name>``.

    >>> reward("format", weight=0.5)
    RewardConfig(name='format', weight=0.5, args={}, timeout=60.0)
    """
    return RewardConfig(name=fn if isinstance(fn, str) else _register(fn), weight=weight, args=args, timeout=timeout)


def _register(fn: Callable) -> str:
    from thinktune.rewards.registry import REWARDS

    if not callable(fn):
        raise ConfigError(f"rewards: {fn!r} is neither a reward name nor a callable")
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if module and module != "__main__" and "<" not in qualname:
        try:
            if getattr(importlib.import_module(module), qualname, None) is fn:
                return f"{module}:{qualname}"
        except ImportError:
            pass
    name = f"python:{getattr(fn, '__name__', 'reward')}"
    REWARDS[name] = fn  # a later definition of the same name (a notebook cell run again) replaces it
    return name


def with_rewards(recipe: Recipe, rewards: Iterable[RewardLike] | None) -> Recipe:
    """``r`` scoring with ``rewards`` instead of its own (None keeps its own)."""
    if rewards is None:
        return recipe
    configs = [item if isinstance(item, RewardConfig) else reward(item) for item in rewards]
    return load_recipe(recipe.model_copy(update={"rewards": configs}))


@dataclass
class Summary:
    """What a training run returns: where it is, the held-out metrics before and after, and its record."""

    run_dir: Path
    model: Path | None  # the trained model or adapter (``final/``), loadable by generate/evaluate/merge/export
    before: dict | None  # held-out metrics before training (accuracy, format_accuracy, reward, ...)
    after: dict | None
    notes: list[str] = field(default_factory=list)  # intervals and paired sign tests, one line per metric
    details: dict = field(default_factory=dict)  # everything in summary.json

    def history(self) -> list[dict]:
        """The per-step training record (``metrics.jsonl``): reward, each reward function, KL, loss, timings."""
        return read_jsonl(self.run_dir / "metrics.jsonl")

    def eval_curve(self) -> list[dict]:
        """Held-out evaluations during training (``eval.every``), with their step."""
        return read_jsonl(self.run_dir / "eval_curve.jsonl")


def train(recipe: Recipe, rewards: Iterable[RewardLike] | None = None, resume: bool = False) -> Summary:
    """Run the recipe's stages, as ``thinktune train`` does, and return the :class:`Summary`."""
    from thinktune.pipeline import train as run_train

    recipe = with_rewards(recipe, rewards)
    details = run_train(recipe, resume=resume)
    run_dir = recipe.run.path
    final = run_dir / "final"
    return Summary(
        run_dir=run_dir,
        model=final if final.is_dir() else None,
        before=details.get("before"),
        after=details.get("after"),
        notes=details.get("notes", []),
        details=details,
    )


def evaluate(
    model: str | Path,
    recipe: Recipe | None = None,
    rewards: Iterable[RewardLike] | None = None,
    samples: int | None = None,
    reward_model: str | Path | None = None,
):
    """Evaluate ``model`` (a folder, adapter or alias) on the recipe's held-out set, as ``thinktune eval``
    does; ``samples`` = k sampled completions per problem as well (pass@k, maj@k). Returns an ``EvalResult``
    with ``metrics`` and per-problem ``samples``."""
    from thinktune.data import load_examples
    from thinktune.evaluation import evaluate_recipe
    from thinktune.models import load_for_inference
    from thinktune.rewards.scoring import recipe_scoring, with_reward_model
    from thinktune.rollout import evaluation_backend

    recipe = with_rewards(recipe or load_recipe(), rewards)
    if samples is not None:
        recipe = load_recipe(recipe, [f"eval.samples={samples}"])
    if reward_model:
        recipe = with_reward_model(recipe, str(reward_model))
    _, held_out, task_dataset = load_examples(recipe.data, recipe.eval.split)
    m, tok = load_for_inference(str(model), recipe.model.device, recipe.model.dtype)
    return evaluate_recipe(
        evaluation_backend(recipe, m, tok), recipe, held_out, *recipe_scoring(recipe, task_dataset, tok)
    )


def generate(
    model: str | Path, questions: str | list[str], recipe: Recipe | None = None, max_new_tokens: int = 256
) -> str | list[str]:
    """Greedy answers of ``model`` to one question (a string back) or several (a list), prompted as the recipe
    prompts (its system prompt, format and few-shot examples)."""
    from thinktune.data import PromptBuilder
    from thinktune.models import load_for_inference
    from thinktune.rollout import SamplingParams, make_backend
    from thinktune.tokens import decode

    recipe = recipe or load_recipe()
    m, tok = load_for_inference(str(model), recipe.model.device, recipe.model.dtype)
    builder = PromptBuilder.from_config(tok, recipe.data.model_copy(update={"max_prompt_tokens": 10**6}))
    many = [questions] if isinstance(questions, str) else list(questions)
    out = make_backend(recipe.rollout, m, tok).generate(
        [builder.ids(q) for q in many], SamplingParams(max_new_tokens, greedy=True)
    )
    answers = decode(tok, out.completion_ids, out.completion_mask)
    return answers[0] if isinstance(questions, str) else answers


def chat(model: str | Path, recipe: Recipe | None = None, max_new_tokens: int = 512, temperature: float = 0.7,
         seed: int = 0):  # fmt: skip
    """A conversation with ``model``, prompted with the recipe's system prompt and few-shot examples (none
    without a recipe): ``.reply(text)`` answers with the conversation so far, ``.reset()`` starts over.

        bot = thinktune.chat(summary.model, recipe, temperature=0)
        bot.reply("What is 17 + 25?")
    """
    from thinktune.conversation import Chat
    from thinktune.data import PromptBuilder
    from thinktune.models import load_for_inference

    recipe = recipe or load_recipe(None, ["data.system_prompt=''"])  # no recipe: no system prompt either
    m, tok = load_for_inference(str(model), recipe.model.device, recipe.model.dtype)
    return Chat(m, tok, PromptBuilder.from_config(tok, recipe.data), max_new_tokens, temperature, seed)


def merge(adapter: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Fold a LoRA adapter into its base: a plain Hugging Face folder at ``out`` (see ``thinktune merge``); an
    existing non-empty ``out`` is refused unless ``overwrite``, a run folder always."""
    from thinktune.export import merge_adapter

    return merge_adapter(adapter, out, overwrite)


def export_gguf(
    model: str | Path, out: str | Path, quantization: str = "f16", recipe: Recipe | None = None, overwrite: bool = False
) -> Path:
    """Write ``model`` (an adapter or a model folder) as one GGUF file for llama.cpp and Ollama, with an Ollama
    ``Modelfile`` beside it (see ``thinktune export``); existing files are refused unless ``overwrite``."""
    from thinktune.export import export_gguf as write

    return write(model, out, quantization, recipe, overwrite)
