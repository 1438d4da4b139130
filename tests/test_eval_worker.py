"""eval.worker: the eval.every evaluations made in a process of their own while training goes on, recorded as they
arrive; the same curve, best/ and files as inline evaluations; a worker that dies is started again, and no
evaluation is lost or made twice."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import read_lines, tiny_recipe
from tests.test_faults import kill_when, recipe_file, start
from thinktune.config import ConfigError
from thinktune.pipeline import train
from thinktune.recipe import load_recipe

pytestmark = pytest.mark.slow

STEPS = ["train.steps=6", "eval.every=2", "data.eval_size=4", "eval.before=true", "eval.after=true", "run.threads=1"]


def test_the_worker_records_what_inline_evaluation_records(tmp_path, tiny_model_dir):
    train(tiny_recipe(tmp_path, tiny_model_dir, *STEPS, "run.name=inline"))
    summary = train(tiny_recipe(tmp_path, tiny_model_dir, *STEPS, "run.name=worker", "eval.worker=true"))
    inline, worker = tmp_path / "inline", tmp_path / "worker"
    curve = read_lines(worker / "eval_curve.jsonl")
    assert [r["label"] for r in curve] == ["before", "step2", "step4", "after"]
    assert curve == read_lines(inline / "eval_curve.jsonl")
    for label in ("step2", "step4"):
        assert json.loads((worker / f"eval_{label}.json").read_text()) == json.loads(
            (inline / f"eval_{label}.json").read_text()
        )
    assert (worker / "best.json").read_text() == (inline / "best.json").read_text()
    best, expected = load_file(worker / "best" / "model.safetensors"), load_file(inline / "best" / "model.safetensors")
    assert best.keys() == expected.keys() and all(torch.equal(best[k], expected[k]) for k in best)
    assert summary["best"] == json.loads((inline / "summary.json").read_text())["best"]
    assert not [p.name for p in (worker / "eval_worker").iterdir() if p.name.startswith("step")]  # all recorded
    assert "evaluated step 4" in (worker / "eval_worker.log").read_text()


def test_a_worker_that_dies_is_started_again_and_no_evaluation_is_lost_or_made_twice(
    tmp_path, tiny_model_dir, monkeypatch, capsys
):
    monkeypatch.setenv("THINKTUNE_TEST_DIED_ONCE", str(tmp_path / "died"))
    reward = "rewards=[{name: 'tests.user_rewards:dies_once_in_the_eval_worker'}]"
    train(tiny_recipe(tmp_path, tiny_model_dir, *STEPS, reward, "eval.worker=true"))
    assert (tmp_path / "died").is_file()
    err = capsys.readouterr().err
    assert "evaluation worker died (exit code 3) while evaluating step 2" in err and "1 of 3 restarts" in err
    curve = read_lines(tmp_path / "tiny" / "eval_curve.jsonl")
    assert [r["step"] for r in curve] == [0, 2, 4, 6]  # each once, in order


@pytest.mark.parametrize("on_resume", ["eval.worker=true", "eval.worker=false"])
def test_a_run_killed_while_the_worker_evaluates_makes_that_evaluation_on_resume(tmp_path, tiny_model_dir, on_resume):
    # with the worker switched off on resume, a worker still records what the first left, before training on
    reward = "rewards=[{name: 'tests.user_rewards:slow_in_the_eval_worker'}]"
    recipe = recipe_file(
        tmp_path, tiny_model_dir, *STEPS, "train.steps=4", "run.save_every=2", reward, "eval.worker=true"
    )
    run = tmp_path / "tiny"
    # the step-2 checkpoint follows its snapshot; the worker is 5 s into scoring it
    assert kill_when(start(recipe), lambda: (run / "checkpoint" / "state.pt").is_file())
    assert (run / "eval_worker" / "step2").is_dir() and not (run / "eval_step2.json").exists()
    resumed = start(recipe, on_resume, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert [r["label"] for r in read_lines(run / "eval_curve.jsonl")] == ["before", "step2", "after"]
    assert (run / "eval_worker.log").read_text().count("evaluated step 2") == 1  # the first worker died with the run


def test_the_worker_needs_its_rewards_importable_and_eval_every():
    with pytest.raises(ConfigError, match="eval.worker: true evaluates the eval.every steps"):
        load_recipe(None, ["eval.worker=true"])
    from thinktune.api import reward, with_rewards

    worker = load_recipe(None, ["eval.worker=true", "eval.every=5"])
    with pytest.raises(ConfigError, match=r"rewards\[0\].name: python:<lambda> lives in this process alone"):
        with_rewards(worker, [reward(lambda p, c, **_: [1.0])])


def test_a_resume_keeps_only_the_snapshots_it_has_to_record(tmp_path):
    from thinktune.eval_worker import EvalQueue

    queue = EvalQueue(tmp_path)
    for name in ("step2", "step3", "step6", "step2.partial"):  # step2.partial: save_model's folder, cut short
        (tmp_path / name).mkdir()
    for name in ("step2.json", "step4.json", "step5.json.partial", "recipe.yaml"):  # step4: no snapshot left
        (tmp_path / name).write_text("{}")
    assert queue.pending(start=4, recorded={3}) == [2]  # 3 is recorded; 6 comes after the checkpoint
    queue.keep_only(queue.pending(start=4, recorded={3}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml", "step2", "step2.json"]
