"""best/ keeps the best evaluated model; a significant held-out drop while the training reward rises raises the
regression alarm (console, eval_curve.jsonl, summary, report) and, if asked, stops training."""

import json

import pytest

import thinktune.stages.evaluations as evaluations
from tests.helpers import read_lines, tiny_recipe
from thinktune.pipeline import train

STEPS = ["train.steps=6", "eval.every=2", "data.eval_size=8", "eval.before=true", "eval.after=true"]


@pytest.fixture
def accuracy_falls_at_step_4(monkeypatch):
    """Real evaluations, with the outcomes set: every problem right at step 2, every one wrong from step 4 on.
    (The tiny model gets nothing right on its own; the reward it learns from is the share of 'yes' words,
    which rises over these steps.)"""
    real = evaluations.evaluate_and_save

    def evaluate(run, label, *args):
        result = real(run, label, *args)
        right = {"step2": 1.0, "step4": 0.0, "after": 0.0}.get(label)
        if right is not None:
            for sample in result["samples"]:
                sample["correct"] = right
            result["metrics"]["accuracy"] = right
            run.write_json(f"eval_{label}.json", result)
        return result

    monkeypatch.setattr(evaluations, "evaluate_and_save", evaluate)


def test_the_alarm_stops_training_and_best_keeps_the_better_model(tmp_path, tiny_model_dir, accuracy_falls_at_step_4):
    summary = train(tiny_recipe(tmp_path, tiny_model_dir, *STEPS, "eval.stop_on_regression=true"))
    run = tmp_path / "tiny"
    rewards = [r["reward"] for r in read_lines(run / "metrics.jsonl")]
    assert len(rewards) == 4 and sum(rewards[2:]) > sum(rewards[:2])  # stopped at step 4; the reward rose
    assert summary["stopped_on_regression_at"] == 4
    (alarm,) = summary["regression_alarms"]
    assert "fell from 1.000 at step 2 to 0.000 at step 4 (0 fixed, 8 broken, sign test p = 0.0078)" in alarm
    flagged = [r for r in read_lines(run / "eval_curve.jsonl") if r.get("regression_alarm")]
    assert [r["step"] for r in flagged] == [4] and flagged[0]["regression_broken"] == 8
    assert json.loads((run / "best.json").read_text()) == {"step": 2, "metric": "accuracy", "value": 1.0}
    assert (run / "best" / "model.safetensors").is_file() and (run / "final" / "model.safetensors").is_file()
    assert "Regression alarm." in (run / "report.html").read_text()


def test_without_stop_on_regression_the_run_goes_on_and_says_so(tmp_path, tiny_model_dir, accuracy_falls_at_step_4):
    summary = train(tiny_recipe(tmp_path, tiny_model_dir, *STEPS))
    assert len(read_lines(tmp_path / "tiny" / "metrics.jsonl")) == 6
    assert len(summary["regression_alarms"]) == 1 and "stopped_on_regression_at" not in summary
    assert summary["best"]["step"] == 2
