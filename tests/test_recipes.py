"""Every shipped recipe validates, and each kind runs end to end, scaled down, on the packaged SmolLM2."""

import json

import pytest

from tests.helpers import RECIPES, read_lines
from thinktune.pipeline import train
from thinktune.recipe import load_recipe

pytestmark = pytest.mark.slow


def test_the_shipped_recipes_validate():
    recipes = sorted(RECIPES.glob("*.yaml"))
    assert len(recipes) >= 8, recipes
    for path in recipes:
        load_recipe(path)


SCALED_DOWN = [
    "data.train_size=12",
    "data.eval_size=2",
    "sft.steps=2",
    "sft.batch_size=2",
    "grpo.group_size=2",
    "grpo.prompts_per_step=1",
    "grpo.max_new_tokens=12",
    "train.steps=1",
    "eval.max_new_tokens=12",
]


@pytest.mark.parametrize("name", ["tldr_length", "math_format_accuracy", "math_sft_grpo", "arithmetic_chain"])
def test_recipe_runs_scaled_down(tmp_path, name):
    summary = train(load_recipe(RECIPES / f"{name}.yaml", [*SCALED_DOWN, f"run.output_dir={tmp_path}"]))
    run = tmp_path / name
    assert (run / "final" / "adapter_config.json").is_file() and (run / "comparison.md").is_file()
    curve = read_lines(run / "eval_curve.jsonl")
    assert [(c["step"], c["label"]) for c in curve] == [(0, "before"), (1, "after")]
    assert curve[-1] == {"step": 1, "label": "after", **summary["after"]}
    rewards = {r.name for r in load_recipe(RECIPES / f"{name}.yaml").rewards}
    assert {f"reward/{r}" for r in rewards} <= summary["after"].keys()
    # summaries have no reference answer: no accuracy is reported rather than a meaningless 0
    assert ("accuracy" in summary["after"]) == (name != "tldr_length")


def test_sft_then_a_grpo_run_from_the_sft_checkpoint_evaluating_every_step(tmp_path):
    summary = train(load_recipe(RECIPES / "gsm_symbolic_sft_grpo.yaml", [*SCALED_DOWN, f"run.output_dir={tmp_path}"]))
    run = tmp_path / "gsm_symbolic_sft_grpo"
    for name in ("eval_base.json", "eval_sft.json", "eval_after.json", "sft/config.json", "final/adapter_config.json"):
        assert (run / name).is_file(), name
    assert summary["sft"]["seconds"] > 0 and summary["seconds"] > 0

    overrides = [
        *SCALED_DOWN,
        f"model.name={run / 'sft'}",
        "train.steps=2",
        "eval.every=1",
        f"run.output_dir={tmp_path}",
    ]
    train(load_recipe(RECIPES / "sft_checkpoint_grpo.yaml", overrides))
    curve = [
        json.loads(line) for line in (tmp_path / "sft_checkpoint_grpo" / "eval_curve.jsonl").read_text().splitlines()
    ]
    assert [(c["step"], c["label"]) for c in curve] == [(0, "before"), (1, "step1"), (2, "after")]
    for point in curve:  # each point is the share of its evaluation's completions graded right
        samples = json.loads((tmp_path / "sft_checkpoint_grpo" / f"eval_{point['label']}.json").read_text())["samples"]
        assert point["accuracy"] == pytest.approx(sum(s["correct"] for s in samples) / len(samples))


def test_cot_reward_model_recipe_runs_its_three_stages_scaled_down(tmp_path):
    overrides = [
        "data.train_size=8",
        "data.eval_size=1",
        "pairs.limit=6",
        "pairs.max_new_tokens=8",
        "reward_model.eval_pairs=2",
        "reward_model.steps=1",
        "reward_model.batch_size=2",
        "reward_model.max_length=192",
        "grpo.group_size=2",
        "grpo.prompts_per_step=1",
        "grpo.max_new_tokens=8",
        "train.steps=1",
        f"run.output_dir={tmp_path}",
    ]
    summary = train(load_recipe(RECIPES / "cot_reward_model.yaml", overrides))
    run = tmp_path / "cot_reward_model"
    assert len((run / "pairs.jsonl").read_text().splitlines()) == 6
    assert summary["reward_model"]["pair_accuracy_after"] in (0.0, 0.5, 1.0)  # of the 2 held-out pairs
    assert summary["reward_model"]["pairs"]["held_out"] == 2
    assert (run / "reward_model" / "adapter_config.json").is_file() and (run / "final").is_dir()
    # the before/after comparison reports the learned reward model's score
    assert (
        "reward/reward_model" in summary["after"] and "| reward/reward_model |" in (run / "comparison.md").read_text()
    )
