"""User reward functions used by the tests, imported by path (tests.user_rewards:name)."""


def only_short(prompts, completions, **_):
    return [None if len(c) > 5 else 1.0 for c in completions]


def contains(prompts, completions, word="yes", **_):
    return [float(word in c) for c in completions]


def yes_fraction(prompts, completions, **_):
    """Share of the completion's words that are 'yes' (the tiny model's learning target)."""
    return [c.split().count("yes") / max(1, len(c.split())) for c in completions]


def raises(prompts, completions, **_):
    return [1 / 0 for _ in completions]


def wrong_length(prompts, completions, **_):
    return [1.0]


def returns_nan(prompts, completions, **_):
    return [1.0, float("nan")]


def beyond_float32(prompts, completions, **_):
    return [1.0, 1e39][: len(completions)]


def returns_text(prompts, completions, **_):
    return ["good" for _ in completions]


def not_a_list(prompts, completions, **_):
    return 1.0


def length(prompts, completions, **_):
    """Characters / 100: differs between almost any two samples, so every group carries a gradient."""
    return [len(c) / 100 for c in completions]


def accuracy_with_one_power_tower(prompts, completions, answer, **_):
    """`accuracy`, but the first completion of each batch is replaced by 9^9^9^9: one grader time-out per step."""
    from thinktune.rewards.answers import accuracy_reward

    return accuracy_reward(prompts, ["<answer>9^9^9^9</answer>", *completions[1:]], answer)


def flat_unless_mixed(prompts, completions, question, **_):
    """0.5 for every completion of a question without 'mixed' (a flat group); alternating 0/1 otherwise."""
    return [float(i % 2) if "mixed" in q else 0.5 for i, q in enumerate(question)]


def grader_always_fails(prompts, completions, **_):
    """Every completion graded in the grader process by a call that raises there."""
    from thinktune.rewards.guard import GRADER

    return [GRADER.call(divmod, 1, 0, default=0.0) for _ in completions]


def hangs(prompts, completions, **_):
    """Never returns (well, after an hour)."""
    import time

    time.sleep(3600)


def slow_yes(prompts, completions, **_):
    """yes_fraction, a quarter of a second late: slow, but within any sensible bound."""
    import time

    time.sleep(0.25)
    return yes_fraction(prompts, completions)


def exits(prompts, completions, **_):
    import sys

    sys.exit(0)


def interrupts(prompts, completions, **_):
    raise KeyboardInterrupt


CALLS = {"yes_or_hang": 0}


def yes_or_hang(prompts, completions, **_):
    """yes_fraction, except that call number $THINKTUNE_TEST_HANG_AT of this process never returns."""
    import os
    import time

    CALLS["yes_or_hang"] += 1
    if str(CALLS["yes_or_hang"]) == os.environ.get("THINKTUNE_TEST_HANG_AT"):
        time.sleep(3600)
    return yes_fraction(prompts, completions)


def graded_yes(prompts, completions, **_):
    """yes_fraction with every score passed through the grader process, so that every step grades."""
    from thinktune.rewards.answers import math_equal
    from thinktune.rewards.guard import GRADER

    return [share * GRADER.call(math_equal, "1", "1") for share in yes_fraction(prompts, completions)]


def dies_once_in_the_eval_worker(prompts, completions, **_):
    """yes_fraction; but the evaluation worker's process dies (exit code 3) the first time it scores, leaving the
    file THINKTUNE_TEST_DIED_ONCE names."""
    import os

    marker = os.environ.get("THINKTUNE_TEST_DIED_ONCE")
    if os.environ.get("THINKTUNE_EVAL_WORKER") and marker and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return yes_fraction(prompts, completions)


def slow_in_the_eval_worker(prompts, completions, **_):
    """yes_fraction, taking 5 s a call in the evaluation worker's process."""
    import os
    import time

    if os.environ.get("THINKTUNE_EVAL_WORKER"):
        time.sleep(5)
    return yes_fraction(prompts, completions)
