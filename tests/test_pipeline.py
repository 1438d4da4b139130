"""The train workflow: resume, refusing to overwrite a run, and every stage logging through the trackers."""

import itertools

import pytest

from tests.helpers import read_lines, rewards, tiny_recipe
from thinktune.pipeline import train


@pytest.mark.parametrize(
    "sampling",
    [[], ["grpo.dynamic_sampling=true", "grpo.curriculum=pass_rate"]],
    ids=["plain", "dynamic-sampling-and-curriculum"],
)
def test_resume_continues_where_it_stopped(tmp_path, tiny_model_dir, sampling):
    recipe = tiny_recipe(tmp_path, tiny_model_dir, "train.steps=4", "run.save_every=2", *sampling)
    train(recipe)
    full = rewards(tmp_path / "tiny")
    # a second run stopped after step 2, then resumed, must give the same curve (the prompt sampler's position
    # and pass rates come back with the checkpoint)
    interrupted = tiny_recipe(
        tmp_path, tiny_model_dir, "train.steps=2", "run.save_every=2", "run.name=tiny2", *sampling
    )
    train(interrupted)
    resumed = tiny_recipe(tmp_path, tiny_model_dir, "train.steps=4", "run.save_every=2", "run.name=tiny2", *sampling)
    train(resumed, resume=True)
    assert rewards(tmp_path / "tiny2") == pytest.approx(full, abs=1e-5)


def test_existing_run_is_not_overwritten(tmp_path, tiny_model_dir):
    from thinktune.run_dir import RunError

    with pytest.raises(RunError, match="holds nothing to resume from"):
        train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=1"), resume=True)
    train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=1"))
    with pytest.raises(RunError, match="already holds a run; pass --resume"):
        train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=1"))


def test_every_record_goes_through_the_trackers_named_in_the_recipe(tmp_path, tiny_model_dir, monkeypatch):
    from thinktune import tracking

    seen = []

    class Recorder:
        def __init__(self, run):
            pass

        def log(self, step, metrics, stage="grpo"):
            seen.append((stage, {"step": step, **metrics}))

        def log_samples(self, step, rows):
            seen.extend(("samples", {"step": step, **row}) for row in rows)

        def close(self):
            seen.append(("closed", {}))

    monkeypatch.setitem(tracking.TRACKERS, "jsonl", Recorder)
    train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=2", "eval.every=1", "eval.after=true"))
    stages = [stage for stage, _ in seen]
    assert [stage for stage, _ in itertools.groupby(stages)] == ["grpo", "samples", "eval", "grpo", "samples",
                                                                  "eval", "closed"]  # fmt: skip
    assert stages.count("samples") == 2 * 2 * 8  # every completion of run.samples_per_step=2 groups, each step
    assert [r["step"] for stage, r in seen if stage == "eval"] == [1, 2]
    assert not (tmp_path / "tiny" / "metrics.jsonl").exists()  # only the recorder was asked for

    monkeypatch.undo()
    train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=2", "eval.every=1", "eval.after=true", "run.name=t2"))
    written = read_lines(tmp_path / "t2" / "metrics.jsonl")
    recorded = [r for stage, r in seen if stage == "grpo"]
    assert [set(r) for r in written] == [set(r) for r in recorded]  # the same columns, step first
    assert [r["reward"] for r in written] == pytest.approx([r["reward"] for r in recorded])
    assert [(r["step"], r["label"]) for r in read_lines(tmp_path / "t2" / "eval_curve.jsonl")] == [
        (1, "step1"),
        (2, "after"),
    ]


def test_a_run_killed_between_checkpoints_resumes_with_each_step_logged_once(tmp_path, tiny_model_dir, monkeypatch):
    from thinktune.grpo.trainer import GRPOTrainer

    overrides = ["train.steps=5", "run.save_every=2", "eval.every=1", "eval.after=true"]
    train(tiny_recipe(tmp_path, tiny_model_dir, *overrides))
    whole = tmp_path / "tiny"

    original = GRPOTrainer.step

    def killed_during_step_4(self, step):
        if step == 3:  # steps 1-3 are logged, the checkpoint holds step 2
            (self.run.file("metrics.jsonl")).open("a").write('{"step": 4, "rew')  # a line cut short
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(GRPOTrainer, "step", killed_during_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_recipe(tmp_path, tiny_model_dir, *overrides, "run.name=killed"))
    monkeypatch.undo()
    train(tiny_recipe(tmp_path, tiny_model_dir, *overrides, "run.name=killed"), resume=True)
    killed = tmp_path / "killed"
    for name in ("metrics.jsonl", "samples.jsonl", "eval_curve.jsonl"):
        steps = [r["step"] for r in read_lines(killed / name)]
        assert steps == [r["step"] for r in read_lines(whole / name)], name
    assert rewards(killed) == pytest.approx(rewards(whole), abs=1e-5)
    assert not (killed / "final.partial").exists() and (killed / "final" / "config.json").is_file()


def test_resume_refuses_a_changed_recipe_and_falls_back_past_a_corrupt_checkpoint(tmp_path, tiny_model_dir):
    from thinktune.run_dir import RunError

    train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=4", "run.save_every=2"))
    run = tmp_path / "tiny"
    with pytest.raises(
        RunError, match=r"changed what training does since the run started: .*train.learning_rate: 0.003 -> 0.01"
    ):
        train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=6", "train.learning_rate=0.01"), resume=True)
    with pytest.raises(RunError, match=r"train.steps: 4 -> 6"):  # a decaying schedule would jump
        train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=6", "train.lr_schedule=cosine"), resume=True)

    (run / "checkpoint" / "state.pt").write_bytes(b"cut short by a full disk")
    train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=6", "run.save_every=2", "eval.every=5"), resume=True)
    assert [r["step"] for r in read_lines(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    (change,) = read_lines(run / "resume_changes.jsonl")  # safe changes: allowed, never silent
    assert change == {"step": 2, "changed": {"eval.every": [0, 5], "train.steps": [4, 6]}}  # the one before


def test_the_last_k_checkpoints_are_kept_and_each_is_a_fallback(tmp_path, tiny_model_dir):
    import torch

    train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=5", "run.save_every=1", "run.keep_checkpoints=3"))
    checkpoint = tmp_path / "tiny" / "checkpoint"
    kept = {p.name: torch.load(p, weights_only=True)["step"] for p in checkpoint.iterdir()}
    assert kept == {"state.pt": 5, "previous.pt": 4, "previous-2.pt": 3}

    for name in ("state.pt", "previous.pt"):
        (checkpoint / name).write_bytes(b"cut short")
    more = ["train.steps=6", "run.save_every=1", "run.keep_checkpoints=1"]
    train(tiny_recipe(tmp_path, tiny_model_dir, *more), resume=True)
    assert [r["step"] for r in read_lines(tmp_path / "tiny" / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    (change,) = read_lines(tmp_path / "tiny" / "resume_changes.jsonl")
    assert change["step"] == 3  # resumed from the third newest, past the two unreadable ones
    assert sorted(p.name for p in checkpoint.iterdir()) == ["state.pt"]  # keep_checkpoints=1 from then on


def test_sigterm_finishes_the_step_checkpoints_and_says_how_to_resume(tmp_path, tiny_model_dir, monkeypatch):
    import os
    import signal

    from typer.testing import CliRunner

    from thinktune.cli import app
    from thinktune.grpo.trainer import GRPOTrainer
    from thinktune.recipe import dump_recipe

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(dump_recipe(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=4", "run.save_every=0")))
    train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=4", "run.save_every=0", "run.name=whole"))

    original = GRPOTrainer.step

    def terminated_during_step_2(self, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler or `kill` would, in the middle of the step
        return original(self, step)

    monkeypatch.setattr(GRPOTrainer, "step", terminated_during_step_2)
    result = CliRunner().invoke(app, ["train", str(recipe)])
    assert result.exit_code == 130, result.output
    assert f"stopped after step 2; its checkpoint is saved; continue with: thinktune train {recipe} --resume" in (
        " ".join(result.output.split())
    )
    assert [r["step"] for r in read_lines(tmp_path / "tiny" / "metrics.jsonl")] == [1, 2]
    monkeypatch.undo()
    assert CliRunner().invoke(app, ["train", str(recipe), "--resume"]).exit_code == 0
    assert rewards(tmp_path / "tiny") == pytest.approx(rewards(tmp_path / "whole"), abs=1e-5)


def test_a_checkpoint_that_cannot_be_written_is_a_clear_error_and_the_previous_one_stays(tmp_path, tiny_model_dir):
    from thinktune.run_dir import RunDir, RunError

    train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=2", "run.save_every=1"))
    checkpoint = tmp_path / "tiny" / "checkpoint"
    (checkpoint / "state.pt.partial").mkdir()  # the write fails as on a full disk or a read-only folder
    with pytest.raises(
        RunError, match=r"cannot write .*state.pt.partial .*the step-3 checkpoint; the previous one is intact"
    ):
        train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=4", "run.save_every=1"), resume=True)
    assert RunDir(tiny_recipe(tmp_path, tiny_model_dir), resume=True).read_checkpoint()["step"] == 2


def test_checkpoints_are_also_taken_by_the_clock(tmp_path, tiny_model_dir, monkeypatch):
    from thinktune.grpo.trainer import GRPOTrainer

    seen, original = [], GRPOTrainer.step

    def step(self, index):
        seen.append(self.run.has_checkpoint())
        return original(self, index)

    monkeypatch.setattr(GRPOTrainer, "step", step)
    by_clock = ["train.steps=3", "run.save_every=0", "run.save_minutes=1e-9"]
    train(tiny_recipe(tmp_path, tiny_model_dir, *by_clock))
    assert seen == [False, True, True]  # every step is "minutes" after the last checkpoint
    train(tiny_recipe(tmp_path, tiny_model_dir, *by_clock, "run.save_minutes=0", "run.name=b"))
    assert seen[3:] == [False, False, False]


def test_resuming_a_finished_run_evaluates_again_but_logs_the_evaluation_once(tmp_path, tiny_model_dir):
    steps = ["train.steps=2", "eval.every=1", "eval.after=true"]
    train(tiny_recipe(tmp_path, tiny_model_dir, *steps))
    train(tiny_recipe(tmp_path, tiny_model_dir, *steps), resume=True)
    curve = read_lines(tmp_path / "tiny" / "eval_curve.jsonl")
    assert [(r["step"], r["label"]) for r in curve] == [(1, "step1"), (2, "after")]
    assert [r["step"] for r in read_lines(tmp_path / "tiny" / "metrics.jsonl")] == [1, 2]
