"""thinktune sweep: variants trained on the validation split, tabulated, resumable."""

import json

import pytest
import yaml

from thinktune.config import ConfigError
from thinktune.stats import paired_sign_test
from thinktune.sweep import sweep


def tiny_recipe_file(tmp_path, tiny_model_dir, validation_size=2):
    data = tmp_path / "prompts.jsonl"
    words = "one two three four five six seven eight nine zero cat dog".split()
    data.write_text("\n".join(json.dumps({"question": f"say {w}", "answer": "yes"}) for w in words))
    recipe = {
        "model": {"name": tiny_model_dir, "finetune": "full"},
        "data": {"source": "file", "path": str(data), "eval_size": 2, "validation_size": validation_size,
                 "system_prompt": ""},
        "rewards": [{"name": "tests.user_rewards:yes_fraction"}],
        "grpo": {"group_size": 4, "prompts_per_step": 2, "max_new_tokens": 6},
        "train": {"steps": 2, "learning_rate": 0.003},
        "run": {"output_dir": str(tmp_path / "runs")},
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_sweep_trains_each_variant_and_seed_on_validation_and_resumes(tmp_path, tiny_model_dir, monkeypatch):
    path = tiny_recipe_file(tmp_path, tiny_model_dir)
    rows = sweep(str(path), ["train.learning_rate=0.003,0.001"], [0, 1], "s")
    assert [r["variant"] for r in rows] == ["train.learning_rate=0.001", "train.learning_rate=0.003"]
    root = tmp_path / "runs" / "s"
    for row in rows:
        assert row["seeds"] == [0, 1] and len(row["gains"]) == 2 and row["metric"] == "accuracy"
        assert row["gain"] == pytest.approx(sum(row["gains"]) / 2)
    runs = sorted(root.glob("*/seed*"))
    assert len(runs) == 4
    for run in runs:  # the shared evaluation before training is each curve's first point
        first = json.loads((run / "eval_curve.jsonl").read_text().splitlines()[0])
        assert (first["step"], first["label"]) == (0, "before")
        recipe = yaml.safe_load((run / "recipe.yaml").read_text())
        assert recipe["eval"]["split"] == "validation"
        assert json.loads((run / "summary.json").read_text())["before"]["n"] == 2  # the 2 validation questions
    # Same starting model and evaluation: the evaluation before training is done once and reused.
    befores = {(run / "eval_before.json").read_text() for run in runs}
    assert len(befores) == 1
    assert "train.learning_rate=0.001" in (root / "sweep.md").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("thinktune.pipeline.train", no_training)
    assert sweep(str(path), ["train.learning_rate=0.003,0.001"], [0, 1], "s") == rows


def test_sweep_needs_a_validation_split(tmp_path, tiny_model_dir):
    path = tiny_recipe_file(tmp_path, tiny_model_dir, validation_size=0)
    with pytest.raises(ConfigError, match="data.validation_size"):
        sweep(str(path), ["train.steps=1,2"], [0], "s")


def test_held_out_runs_the_recipe_as_it_is_once_per_seed(tmp_path, tiny_model_dir):
    path = tiny_recipe_file(tmp_path, tiny_model_dir)
    with pytest.raises(ConfigError, match="choose settings on validation"):
        sweep(str(path), ["train.steps=1,2"], [0], "final", split="held_out")
    rows = sweep(str(path), [], [0, 1], "final", split="held_out")
    assert len(rows) == 1 and rows[0]["split"] == "held_out" and rows[0]["seeds"] == [0, 1]
    for seed in (0, 1):
        run = tmp_path / "runs" / "final" / "recipe" / f"seed{seed}"
        assert yaml.safe_load((run / "recipe.yaml").read_text())["eval"]["split"] == "held_out"
        assert json.loads((run / "eval_after.json").read_text())["split"] == "held_out"
    assert "| held-out |" in (tmp_path / "runs" / "final" / "sweep.md").read_text()


def test_each_step_every_seed_evaluated_is_a_row_graded_against_the_same_before(tmp_path, tiny_model_dir):
    path = tiny_recipe_file(tmp_path, tiny_model_dir, validation_size=4)
    rows = sweep(str(path), [], [0, 1], "s", base_overrides=["train.steps=3", "eval.every=1"])
    assert [r["variant"] for r in rows] == [*(f"train.steps=3 eval.every=1, step {s}" for s in (1, 2)),
                                           "train.steps=3 eval.every=1"]  # fmt: skip
    step = rows[1]
    assert step["step"] == 2 and step["minutes"] is None and step["split"] == "validation"
    for seed, gain, p in zip((0, 1), step["gains"], step["p_values"], strict=True):
        run = tmp_path / "runs" / "s" / "train.steps=3_eval.every=1" / f"seed{seed}"
        before, after = (json.loads((run / f"eval_{n}.json").read_text()) for n in ("before", "step2"))
        assert gain == after["metrics"]["accuracy"] - before["metrics"]["accuracy"]
        correct = [[s["correct"] for s in e["samples"]] for e in (before, after)]
        assert p == paired_sign_test(*correct)["p_value"]
    assert "| train.steps=3 eval.every=1, step 2 | validation |" in (tmp_path / "runs" / "s" / "sweep.md").read_text()
