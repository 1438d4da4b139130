"""The public Python API: recipes from files, dicts or recipes; rewards as names, import paths or callables; train,
evaluate and generate returning plain objects."""

import pytest

import thinktune
from tests.helpers import tiny_recipe
from tests.user_rewards import yes_fraction
from thinktune.config import ConfigError
from thinktune.rewards.registry import REWARDS, RewardError, resolve_reward


def test_only_the_api_is_public():
    assert sorted(thinktune.__all__) == sorted(
        ["Summary", "chat", "evaluate", "export_gguf", "generate", "load_recipe", "merge", "reward", "train"]
    )


def test_a_recipe_from_a_dict_a_recipe_or_a_file_with_overrides(tmp_path):
    r = thinktune.load_recipe({"train": {"steps": 7}, "grpo": {"group_size": 4}}, ["train.learning_rate=0.01"])
    assert (r.train.steps, r.grpo.group_size, r.train.learning_rate) == (7, 4, 0.01)
    again = thinktune.load_recipe(r, ["train.steps=9"])
    assert again.train.steps == 9 and r.train.steps == 7  # the original is left as it was
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  steps: 3\n")
    assert thinktune.load_recipe(path).train.steps == 3
    with pytest.raises(ConfigError, match="train.stepz: unknown key"):
        thinktune.load_recipe({"train": {"stepz": 3}})


def test_a_callable_reward_is_named_by_its_import_path_or_registered_in_the_process():
    assert thinktune.reward(yes_fraction, weight=2.0).name == "tests.user_rewards:yes_fraction"  # resumable by path

    def notebook_reward(prompts, completions, **_):
        return [1.0] * len(completions)

    config = thinktune.reward(notebook_reward, weight=0.5, word="yes")
    assert (config.name, config.weight, config.args) == ("python:notebook_reward", 0.5, {"word": "yes"})
    assert REWARDS["python:notebook_reward"] is notebook_reward
    with pytest.raises(ConfigError, match="neither a reward name nor a callable"):
        thinktune.reward(3)
    with pytest.raises(RewardError, match="'python:gone' was a Python function given to thinktune.train"):
        resolve_reward("python:gone")  # a run resumed by a process that never registered it


def test_train_with_a_callable_reward_learns_and_returns_a_summary(tmp_path, tiny_model_dir):
    calls = []

    def says_yes(prompts, completions, **_):  # a closure: not importable, so registered in this process
        calls.append(len(completions))
        return yes_fraction(prompts, completions)

    r = tiny_recipe(tmp_path, tiny_model_dir, "eval.before=true", "eval.after=true")
    summary = thinktune.train(r, rewards=[says_yes])
    assert isinstance(summary, thinktune.Summary) and summary.run_dir == tmp_path / "tiny"
    assert (summary.model / "config.json").is_file() and calls  # the callable did the scoring
    history = summary.history()
    assert [h["step"] for h in history] == list(range(1, 31))
    first, last = (sum(h["reward"] for h in part) / 5 for part in (history[:5], history[-5:]))
    assert last > first + 0.3  # it learned from the callable's reward
    assert summary.after["reward"] > summary.before["reward"] and summary.notes

    result = thinktune.evaluate(summary.model, r, rewards=[says_yes])
    assert result.metrics["reward"] == pytest.approx(summary.after["reward"])
    answers = thinktune.generate(summary.model, ["say one", "say two"], r, max_new_tokens=8)
    assert len(answers) == 2 and all("yes" in a for a in answers)
    assert thinktune.generate(summary.model, "say one", r, max_new_tokens=8) == answers[0]
    bot = thinktune.chat(summary.model, r, max_new_tokens=8, temperature=0)
    assert bot.reply("say one") == answers[0]  # the recipe's prompt, as in training and generate
