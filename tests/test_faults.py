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
from thinktune.recipe import dump_recipe

pytestmark = pytest.mark.slow

STEPS = ["train.steps=6", "run.save_every=2", "eval.every=3", "eval.after=true"]


def start(recipe, *extra, env=None):
    """``thinktune train`` in a process group of its own, as a terminal would start it (Ctrl-C: ``killpg``)."""
    command = [sys.executable, "-m", "thinktune.cli", "train", str(recipe), *extra]
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env
    )


def wait_for(ready, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


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


def recipe_file(folder, tiny_model_dir, *overrides):
    """The tiny recipe with ``overrides``, written to ``folder/r.yaml`` for the command line."""
    path = folder / "r.yaml"
    path.write_text(dump_recipe(tiny_recipe(folder, tiny_model_dir, *overrides)))
    return path


def finished_run(folder, tiny_model_dir, *overrides):
    """The run folder of a run never interrupted."""
    process = start(recipe_file(folder, tiny_model_dir, *overrides))
    assert process.wait() == 0, process.stderr.read()
    return folder / "tiny"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir):
    return finished_run(tmp_path_factory.mktemp("whole"), tiny_model_dir, *STEPS)


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
    recipe = recipe_file(tmp_path, tiny_model_dir, *STEPS)
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


# Two user rewards: yes_or_hang (hangs on one call when told to) and graded_yes (weight 0, but every completion
# goes through the grader process, so every step grades).
SIGNALLED = [
    "train.steps=3",
    "run.save_every=2",
    "rewards=[{name: 'tests.user_rewards:yes_or_hang', timeout: 600}, {name: 'tests.user_rewards:graded_yes', "
    "weight: 0.0}]",
]


@pytest.fixture(scope="module")
def uninterrupted_graded(tmp_path_factory, tiny_model_dir):
    return finished_run(tmp_path_factory.mktemp("graded"), tiny_model_dir, *SIGNALLED)


def test_ctrl_c_never_reaches_the_grader_and_a_resumed_run_equals_the_uninterrupted(
    tmp_path, tiny_model_dir, uninterrupted_graded
):
    recipe = recipe_file(tmp_path, tiny_model_dir, *SIGNALLED)
    run = tmp_path / "tiny"
    process = start(recipe)
    wait_for(lambda: lines(run / "metrics.jsonl") >= 1)  # in step 2
    os.killpg(process.pid, signal.SIGINT)  # what the terminal's Ctrl-C sends: the whole foreground group
    assert process.wait() == 130, process.stderr.read()
    resumed = start(recipe, "--resume")
    assert resumed.wait() == 0, resumed.stderr.read()
    assert numbers(run) == numbers(uninterrupted_graded)  # grader_errors and grader_timeouts included
    assert all(r["grader_errors"] == 0 for r in read_lines(run / "metrics.jsonl"))


def test_ctrl_c_inside_a_hanging_reward_stops_at_once_with_the_last_step_checkpointed(
    tmp_path, tiny_model_dir, uninterrupted_graded
):
    recipe = recipe_file(tmp_path, tiny_model_dir, *SIGNALLED)
    run = tmp_path / "tiny"
    process = start(recipe, env={**os.environ, "THINKTUNE_TEST_HANG_AT": "3"})  # step 3's call never returns
    wait_for(lambda: lines(run / "metrics.jsonl") >= 2)
    time.sleep(1.0)  # well inside the hanging call
    os.killpg(process.pid, signal.SIGINT)
    began = time.monotonic()
    assert process.wait(timeout=30) == 130, process.stderr.read()
    assert time.monotonic() - began < 5.0
    assert torch.load(run / "checkpoint" / "state.pt", weights_only=True)["step"] == 2
    resumed = start(recipe, "--resume")  # the reward behaves this time
    assert resumed.wait() == 0, resumed.stderr.read()
    assert numbers(run) == numbers(uninterrupted_graded)  # the dropped step's sampling was put back exactly


def test_two_runs_started_together_on_one_folder_exactly_one_runs(tmp_path, tiny_model_dir):
    # Long enough that the later of the two, slowed by the other on a loaded machine, still finds the first running
    recipe = recipe_file(tmp_path, tiny_model_dir, "train.steps=8")
    first, second = start(recipe), start(recipe)
    codes = sorted([first.wait(), second.wait()])
    errors = first.stderr.read() + second.stderr.read()
    assert codes == [0, 2], errors
    assert any(f"is in use by process {p.pid} (" in errors for p in (first, second)) and f"train {recipe}" in errors
    assert [r["step"] for r in read_lines(tmp_path / "tiny" / "metrics.jsonl")] == list(range(1, 9))


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB tmpfs (root can mount one; elsewhere the test is skipped)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_mid_run_is_one_line_and_resume_continues(tmp_path, tiny_model_dir, small_disk):
    recipe = recipe_file(tmp_path, tiny_model_dir, "train.steps=6", "run.save_every=1", f"run.output_dir={small_disk}")
    run = small_disk / "tiny"
    process = start(recipe)
    wait_for(lambda: lines(run / "metrics.jsonl") >= 2)
    filler = small_disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    for size in (1 << 20, 4096, 1):  # fill the disk to the last byte
        try:
            while True:
                os.write(descriptor, b"\0" * size)
        except OSError:
            pass
    os.close(descriptor)
    assert process.wait() == 2
    error = process.stderr.read()
    assert "Traceback" not in error
    (line,) = [line for line in error.splitlines() if line.startswith("error:")]
    assert "cannot write" in line and "No space left on device" in line and "--resume" in line
    filler.unlink()
    resumed = start(recipe, "--resume")
    assert resumed.wait() == 0, resumed.stderr.read()
    assert [r["step"] for r in read_lines(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_a_process_refused_while_the_holder_writes_its_record_still_names_the_holder(tmp_path):
    import fcntl
    import json
    import threading
    import time

    from thinktune.outputs import RunLock
    from thinktune.run_dir import RunError

    holder = (tmp_path / ".lock").open("a+")
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # locked, its record not written yet

    def write_record():
        time.sleep(0.2)
        holder.write(json.dumps({"pid": 4242, "command": "thinktune train r.yaml"}) + "\n")
        holder.flush()

    threading.Thread(target=write_record).start()
    with pytest.raises(RunError, match=r"in use by process 4242 \(thinktune train r.yaml\)"):
        RunLock(tmp_path).acquire()
    holder.close()
