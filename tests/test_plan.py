"""``thinktune plan``: a worst-case step measured in a separate process, held to a memory budget."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from tests.conftest import build_tiny_model
from tests.helpers import read_lines, tiny_recipe
from thinktune.cli import app
from thinktune.config import ConfigError
from thinktune.pipeline import train
from thinktune.plan import measure
from thinktune.recipe import load_recipe

# 256 new tokens on a 256-wide model: the update's activations grow by tens of MB per micro-batch doubling, well
# clear of the process's own noise in resident memory
WORST = ("grpo.max_new_tokens=256", "run.memory_budget_gb=100")


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("wide-llama"), hidden=256))


@pytest.fixture(scope="module")
def measured(tmp_path_factory, wide_model):
    recipe = tiny_recipe(tmp_path_factory.mktemp("plan"), wide_model, *WORST)
    return recipe, measure(recipe)


def test_the_plan_measures_the_worst_case_at_every_micro_batch_size(measured):
    recipe, plan = measured
    rows = recipe.grpo.prompts_per_step * recipe.grpo.group_size
    assert plan.rollout["completion_tokens"] == rows * 256  # every completion ran to max_new_tokens
    assert plan.prompt_tokens == 7  # every prompt: <|im_start|> user say <word> <|im_end|> <|im_start|> assistant
    assert sorted(plan.updates) == [1, 2, 4, 8, 16, 32]
    assert plan.peak_gb(32) > plan.peak_gb(1) + 0.1  # activations of 32 rows at once, against one
    assert plan.runtime_gb < plan.loaded_gb <= plan.peak_gb(1)
    assert plan.choose(recipe) == 32  # everything fits 100 GB
    projected = plan.projected_seconds(recipe, 32)
    assert projected["grpo steps"] == pytest.approx(30 * (plan.rollout["seconds"] + plan.updates[32]["seconds"]))


def test_train_takes_the_largest_micro_batch_that_fits_the_budget_and_learns_the_same(tmp_path, measured,
                                                                                       wide_model):  # fmt: skip
    _, plan = measured
    budget = (plan.peak_gb(16) + plan.peak_gb(32)) / 2  # measured again in the run, under this budget
    steps = ("train.steps=3", "grpo.max_new_tokens=256")
    planned = tiny_recipe(tmp_path, wide_model, *steps, f"run.memory_budget_gb={budget}", "run.name=planned")
    train(planned)
    saved = load_recipe(tmp_path / "planned" / "recipe.yaml")
    assert saved.grpo.micro_batch_size == 16
    record = json.loads((tmp_path / "planned" / "plan.json").read_text())
    assert record["micro_batch"] == 16 and record["exceeded"]["micro_batch"] == 32
    # the plan ran in its own process: the run is the one it would be without it, at that micro-batch size
    train(tiny_recipe(tmp_path, wide_model, *steps, "grpo.micro_batch_size=16", "run.plan=false", "run.name=plain"))

    def untimed(run):
        records = read_lines(tmp_path / run / "metrics.jsonl")
        return [
            {k: v for k, v in r.items() if not k.startswith("seconds") and not k.endswith("_per_s")} for r in records
        ]

    assert untimed("planned") == untimed("plain")


def test_a_step_over_the_budget_is_refused_naming_what_to_change(tmp_path, tiny_model_dir):
    recipe = tiny_recipe(tmp_path, tiny_model_dir, "model.finetune=lora", "run.memory_budget_gb=0.05")
    with pytest.raises(ConfigError) as refused:
        train(recipe)
    message = str(refused.value)
    assert "0.05 GB budget (run.memory_budget_gb)" in message and "loading phase" in message
    assert "model.quantize=nf4" in message
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir() if p.name != ".lock") == ["recipe.yaml"]
    # the same from the command line: the table, then the refusal, exit status 2
    result = CliRunner().invoke(app, ["plan", str(tmp_path / "tiny" / "recipe.yaml")])
    assert result.exit_code == 2 and "over budget: stopped there" in result.output
    assert "model.quantize=nf4" in result.output


def test_a_refusal_in_the_update_names_checkpointing_a_smaller_micro_batch_and_a_token_budget(measured):
    recipe, plan = measured
    over = dataclasses.replace(plan, budget_gb=plan.peak_gb(1) - 0.001)  # not even one row at a time
    with pytest.raises(ConfigError, match=r"in its update phase, .* try train.gradient_checkpointing=true$"):
        over.choose(recipe)
    without = dataclasses.replace(plan, updates={16: plan.updates[16]}, budget_gb=plan.peak_gb(16) - 0.001)
    fixes = "try train.gradient_checkpointing=true, grpo.micro_batch_size=8, grpo.micro_batch_tokens=2048$"  # 8 x 256
    with pytest.raises(ConfigError, match=fixes):
        without.choose(recipe)
    for budget, rows in ((4096, 16), (1024, 4)):  # passes of 16 rows of 256 tokens, then of 4: the budget halves
        budgeted = recipe.model_copy(update={"grpo": recipe.grpo.model_copy(update={"micro_batch_tokens": budget})})
        with pytest.raises(
            ConfigError, match=f"try train.gradient_checkpointing=true, grpo.micro_batch_tokens={rows // 2 * 256}$"
        ):
            without.choose(budgeted)


def test_a_resumed_run_keeps_the_micro_batch_its_plan_chose(tmp_path):
    from thinktune.config import Recipe
    from thinktune.plan import planned

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "recipe.yaml").write_text("grpo:\n  micro_batch_size: 16\n")
    where = {"output_dir": str(tmp_path), "name": "run"}
    budgeted = Recipe.model_validate({"run": {**where, "memory_budget_gb": 8}})
    assert planned(budgeted).grpo.micro_batch_size == 16
    assert planned(Recipe.model_validate({"run": where})).grpo.micro_batch_size == 8  # no budget: nothing planned
    (folder / "recipe.yaml").write_text("grpo: [not, a, section]\n")
    assert planned(budgeted).grpo.micro_batch_size == 8  # unreadable: left to the resume check
