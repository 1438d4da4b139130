"""Recipe loading: defaults, overrides, and every kind of bad recipe stopped at load with the key named."""

import re

import pytest

from thinktune.config import ConfigError
from thinktune.recipe import load_recipe, parse_override


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path):
    r = load_recipe(write(tmp_path, "grpo:\n  group_size: 4\n"), ["grpo.beta=0.04", "train.steps=3", "run.name=x"])
    assert (r.grpo.group_size, r.grpo.beta, r.train.steps, r.run.name) == (4, 0.04, 3, "x")
    assert r.batch_size == 4 * r.grpo.prompts_per_step
    assert parse_override("data.task_config={min_terms: 2}") == ("data.task_config", {"min_terms": 2})


def test_a_generated_task_defaults_to_basic_arithmetic_and_a_file_has_no_task():
    assert load_recipe(None).data.task == "basic_arithmetic"
    assert load_recipe(None, ["data.source=file", "data.path=x.jsonl"]).data.task is None


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("grpo:\n  group_sise: 4\n", [], "grpo.group_sise: unknown key"),
        ("", ["grpo.group_size=1"], "grpo.group_size: Input should be greater than or equal to 2"),
        ("", ["grpo.group_size=many"], "grpo.group_size: Input should be a valid integer"),
        ("", ["grpo.loss=nope"], "grpo.loss: unknown 'nope'; known: token, sequence, dr_grpo, cispo"),
        ("", ["data.source=file"], "data.path: required when data.source is file"),
        ("", ["data.source=file", "data.path=x", "data.task=chain_sum"], "data.task: not used by data.source file"),
        ("", ["data.source=passages", "data.hub_id=x"], "data.hub_id: not used by data.source passages"),
        ("", ["data.source=gsm8k", "data.columns={q: a}"], "data.columns: not used by data.source gsm8k"),
        ("", ["data.source=csv"], "data.source: unknown 'csv'; known: reasoning_gym, file, chat"),
        ("", ["rewards=[{name: acuracy}]"], "rewards[0].name: unknown 'acuracy'; known: accuracy, gsm8k_strict"),
        ("", ["rewards=[{name: format}, {name: 'no_such_pkg:f'}]"], "rewards[1].name: cannot import module"),
        ("", ["rewards=[{name: 'tests.user_rewards:nope'}]"], "rewards[0].name: 'tests.user_rewards' has no function"),
        ("", ["train.learning_rate=-1"], "train.learning_rate: Input should be greater than 0"),
        ("", ["model.finetune=half"], "model.finetune: Input should be 'lora' or 'full'"),
        ("", ["grpo"], "expected key.sub=value"),
        ("", ["run.name=../../elsewhere"], "run.name: must be a plain folder name"),
        ("", ["run.name=.."], "run.name: must be a plain folder name"),
        ("", ["grpo.scale_rewards=true"], "grpo.scale_rewards: is now group, batch or none (true was group)"),
        ("", ["grpo.scale_rewards=std"], "grpo.scale_rewards: Input should be 'group', 'batch' or 'none'"),
        ("", ["grpo.top_entropy_quantile=0"], "grpo.top_entropy_quantile: Input should be greater than 0"),
        ("", ["rollout.correction_clip=1"], "rollout.correction_clip: Input should be greater than 1"),
        ("", ["run.name='...'"], "run.name: must be a plain folder name"),
        ("", ["run.name=..."], "override 'run.name=...': the value is not YAML"),
        ("", ["run.name=" + "a" * 201], "run.name: at most 200 characters, got 201"),
        (
            "",
            ["data.source=file", "data.path=x", "rewards=[{name: task_score}]"],
            "rewards[0].name: task_score needs data.source=reasoning_gym, this recipe's is file",
        ),
        (
            "",
            ["rewards=[{name: 'tests.user_rewards:hangs', timeout: 0}]"],
            "rewards.0.timeout: Input should be greater",
        ),
        ("", ["train.learning_rate=.inf"], "train.learning_rate: Input should be a finite number"),
        ("", ["rewards=[{name: format, weight: .nan}]"], "rewards.0.weight: Input should be a finite number"),
        ("grpo:\n  beta: [1,\n", [], "line 3, column 1 is not valid YAML"),
        ("", ["grpo.beta=1", "grpo.beta.x=1"], "grpo.beta is not a section"),
        ("- a\n- b\n", [], "a recipe is a mapping"),
        ("", ["stages=[grpo, sft]"], "stages: ['grpo', 'sft'] must name each stage at most once, in the order"),
        ("", ["stages=[grpo, grpo]"], "must name each stage at most once"),
        ("", ["stages=[]"], "must name each stage at most once"),
        ("", ["stages=[rl]"], "stages.0: Input should be 'sft', 'pairs', 'reward_model' or 'grpo'"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_recipe(write(tmp_path, text), overrides)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_an_override_that_switches_the_source_drops_the_old_sources_fields(tmp_path, capsys):
    recipe = write(tmp_path, "data:\n  task: chain_sum\n  task_config: {min_terms: 2}\n")
    r = load_recipe(recipe, ["data.source=file", "data.path=mine.jsonl"])
    assert (r.data.source, r.data.path, r.data.task, r.data.task_config) == ("file", "mine.jsonl", None, {})
    assert "data.source=file (was reasoning_gym): dropped the recipe's data.task, data.task_config" in " ".join(
        capsys.readouterr().err.split()
    )


def test_a_recipe_file_that_sets_both_names_the_override_that_clears_each_field(tmp_path):
    recipe = write(tmp_path, "data:\n  source: file\n  path: x.jsonl\n  task: chain_sum\n  task_config: {a: 1}\n")
    with pytest.raises(ConfigError) as caught:
        load_recipe(recipe)
    assert (
        "data.task: not used by data.source file (it reads path, eval_path, columns); clear it with data.task=null"
        in (str(caught.value))
    )
    assert "clear it with 'data.task_config={}'" in str(caught.value)
    assert load_recipe(recipe, ["data.task=null", "data.task_config={}"]).data.task is None  # the way out works
