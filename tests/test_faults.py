"""Fault injection: `thinktune train` as a subprocess, killed with SIGKILL at points inside a step, during a
checkpoint and while the final model is saved, then resumed: every step logged once, the same curve as a run that
was never killed, to the bit (default thread count)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import read_lines, tiny_recipe
from thinktune.config import dump_recipe

pytestmark = pytest.mark.slow

STEPS = ["train.steps=6", "run.save_every=2", "eval.every=3", "eval.after=true"]


def start(recipe_file, *extra):
    command = [sys.executable, "-m", "thinktune.cli", "train", str(recipe_file), *extra]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def lines(path):
    return len(path.read_text().splitlines()) if path.is_file() else 0


def numbers(run):
    """Every logged figure of every step except the timings, which differ between any two runs."""
    return [
        {key: value for key, value in record.items() if not key.startswith("seconds") and not key.endswith("per_s")}
        for record in read_lines(run / "metrics.jsonl")
    ]


def kill_when(process, ready, timeout=120.0) -> bool:
    """SIGKILL ``process`` as soon as ``ready()``; False if it finished first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.0005)  # some windows (the tiny model's final save) last a few milliseconds
    process.wait()
    return False


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("whole")
    recipe = folder / "r.yaml"
    recipe.write_text(dump_recipe(tiny_recipe(folder, tiny_model_dir, *STEPS)))
    process = start(recipe)
    assert process.wait() == 0, process.stderr.read()
    return folder / "tiny"


KILL_POINTS = {
    # in step 2's rollout or update: step 1 is logged, no checkpoint yet
    "inside step 2, before any checkpoint": lambda run: lines(run / "metrics.jsonl") >= 1,
    # just after the step-2 checkpoint appeared: in step 3, or the evaluation after it
    "after the first checkpoint": lambda run: (run / "checkpoint" / "state.pt").is_file(),
    # in the evaluation of step 3 (its file is written last)
    "during an evaluation": lambda run: lines(run / "metrics.jsonl") >= 3,
    # while the second checkpoint replaces the first
    "while a checkpoint is replaced": lambda run: (run / "checkpoint" / "previous.pt").is_file(),
    # while the final model is written
    "while the final model is saved": lambda run: (run / "final.partial").exists(),
}


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_sigkill_then_resume_gives_the_uninterrupted_run(tmp_path, tiny_model_dir, uninterrupted, point):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(dump_recipe(tiny_recipe(tmp_path, tiny_model_dir, *STEPS)))
    run = tmp_path / "tiny"
    killed = kill_when(start(recipe), lambda: KILL_POINTS[point](run))
    resumed = start(recipe, "--resume")
    assert resumed.wait() == 0, resumed.stderr.read()
    for name in ("metrics.jsonl", "samples.jsonl", "eval_curve.jsonl"):
        assert [r["step"] for r in read_lines(run / name)] == [r["step"] for r in read_lines(uninterrupted / name)]
    assert numbers(run) == numbers(uninterrupted)  # every metric exactly, not just close
    final, whole = (load_file(folder / "final" / "model.safetensors") for folder in (run, uninterrupted))
    assert all(torch.equal(final[name], whole[name]) for name in whole)
    assert (run / "final" / "config.json").is_file() and not (run / "final.partial").exists()
    assert killed, f"the run finished before the kill point ({point})"
