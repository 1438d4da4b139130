"""Every grader on hostile completions: a finite score in bounded time, never a hang (the grader process)."""

import math
import os
import signal
import threading
import time

import pytest

from thinktune.rewards import REWARDS
from thinktune.rewards.guard import GRADER, BoundedCalls

HOSTILE = {
    "power tower": "<answer>9^9^9^9</answer>",
    "latex power tower": "<answer>$9^{9^{9^{9}}}$</answer>",
    "100k characters": "<answer>" + "1" * 100_000 + "</answer>",
    "100k of prose": "blah " * 20_000,
    "10k nested braces": "<answer>\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}</answer>",
    "division by zero": "<answer>\\frac{1}{0}</answer>",
    "nan": "<answer>nan</answer>",
    "inf": "<answer>-inf</answer>",
    "huge float": "<answer>1e999</answer>",
    "non-UTF-8 junk": "<answer>\udcff\udcfe\x00\ufffd" + bytes(range(256)).decode("latin-1") + "</answer>",
    "empty": "",
}


GRADED = [
    "accuracy",
    "numeric_closeness",
    "gsm8k_strict",
    "gsm8k_flexible",
    "integer",
    "format",
    "format_soft",
    "tag_count",
    "length_chars",
]


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_completion_gets_a_finite_score_in_bounded_time(case):
    completion = HOSTILE[case]
    start = time.perf_counter()
    for name in GRADED:
        (value,) = REWARDS[name](["p"], [completion], answer=["1"])
        assert value is None or math.isfinite(value), (name, value)
    assert time.perf_counter() - start < 3 * GRADER.seconds  # at most one time-out per case


def test_power_tower_is_wrong_not_a_hang_even_off_the_main_thread():
    # math-verify's own time-out relies on signals, which only the main thread receives.
    result = []
    worker = threading.Thread(
        target=lambda: result.append(REWARDS["accuracy"](["p"], [HOSTILE["power tower"]], answer=["1"]))
    )
    worker.start()
    worker.join(timeout=3 * GRADER.seconds)
    assert not worker.is_alive() and result == [[0.0]]


def test_a_grader_over_its_bound_is_killed_counted_and_replaced():
    bounded = BoundedCalls(seconds=0.5, preload=())
    assert bounded.call(time.sleep, 30, default="timed out") == "timed out"
    assert bounded.counts() == (1, 1, 0)
    assert bounded.call(divmod, 7, 2) == (3, 1)  # a fresh process answers the next call
    assert bounded.call(divmod, 1, 0, default=-1) == -1  # an exception scores the default, counted as an error
    assert bounded.counts() == (3, 1, 1) and "ZeroDivisionError" in bounded.last_error


def test_a_stop_request_abandons_the_grader_call_and_the_next_call_gets_its_own_answer():
    from thinktune.rewards.bounded import StopRequested

    class Stop:
        requested = False

    bounded = BoundedCalls(seconds=30, preload=())
    bounded.call(divmod, 1, 1)  # started
    bounded.stop = Stop()
    threading.Timer(0.3, lambda: setattr(bounded.stop, "requested", True)).start()
    began = time.monotonic()
    with pytest.raises(StopRequested):
        bounded.call(time.sleep, 30)
    assert time.monotonic() - began < 1.5
    bounded.stop = None
    assert bounded.call(divmod, 7, 2) == (3, 1)  # not the abandoned call's late answer


def test_the_grader_ignores_the_terminals_ctrl_c():
    bounded = BoundedCalls(seconds=5, preload=())
    bounded.call(divmod, 1, 1)
    child = bounded._process.pid
    assert os.getpgid(child) == child != os.getpgid(0)  # a process group of its own: the terminal's SIGINT misses it
    os.kill(child, signal.SIGINT)  # and sent to it directly, it is ignored
    assert bounded.call(divmod, 7, 2) == (3, 1) and bounded.counts()[2] == 0 and bounded._process.pid == child


def test_the_grader_exits_quietly_when_the_trainer_is_gone():
    """A trainer that exits or is killed closes its end of the pipe: the grader ends with status 0, without the
    EOFError traceback it printed under an OOM-killed run."""
    bounded = BoundedCalls(seconds=5, preload=())
    bounded.call(divmod, 1, 1)
    process = bounded._process
    bounded._conn.close()
    process.join(timeout=10)
    assert process.exitcode == 0


def test_the_grader_process_gets_no_credentials_and_is_replaced_when_it_dies(monkeypatch):
    import os

    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("THINKTUNE_PLAIN", "visible")
    bounded = BoundedCalls(seconds=5.0, preload=())
    assert bounded.call(os.getenv, "HF_TOKEN", default="unreachable") is None
    assert bounded.call(os.getenv, "THINKTUNE_PLAIN") == "visible"
    first = bounded.call(os.getpid)
    assert bounded.call(os._exit, 3, default="died") == "died"  # the child exits mid-call
    assert bounded.call(os.getpid) != first and os.environ["HF_TOKEN"] == "hf_secret"
    assert bounded.counts() == (5, 0, 1) and "grader process died" in bounded.last_error


def test_reasoning_gym_scorers_run_in_the_grader_process():
    import os

    from thinktune.config import DataConfig
    from thinktune.data import load_examples

    _, held_out, task = load_examples(DataConfig(task="basic_arithmetic", train_size=10, eval_size=3))
    entry = {"question": held_out[0].question, "answer": held_out[0].answer, "metadata": held_out[0].extra["metadata"]}
    calls = GRADER.calls
    assert task.score_answer(held_out[0].answer, entry) == 1.0 and GRADER.calls == calls + 1
    assert task.score_answer("nonsense", entry) == 0.0
    assert GRADER.call(os.getpid) != os.getpid()


def test_a_script_without_a_main_guard_can_grade(tmp_path):
    """The grader process must not re-run the caller's script (multiprocessing's spawn imports ``__main__``)."""
    import subprocess
    import sys

    script = tmp_path / "grade.py"
    script.write_text(
        "from thinktune.rewards.answers import math_equal\n"
        "from thinktune.rewards.guard import GRADER\n"
        "print('graded', GRADER.call(math_equal, '0.5', '1/2'))\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ["graded", "True"], result.stderr[-500:]
