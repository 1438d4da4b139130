"""The reward registry and RewardSet: names and import paths, weights, None masking, bound args, errors."""

import math

import pytest

from thinktune.config import RewardConfig
from thinktune.rewards import RewardError, RewardSet
from thinktune.rewards.registry import Incidents


def test_weighted_sum_and_none_is_masked():
    rs = RewardSet(
        [RewardConfig(name="format", weight=0.5), RewardConfig(name="tests.user_rewards:only_short", weight=2.0)]
    )
    scores = rs.score(
        ["p"] * 2, ["<reasoning>\n12 + 5 = 17\n</reasoning>\n<answer>\n17\n</answer>", "x"], [{"answer": "17"}] * 2
    )
    assert math.isnan(scores.per_function[1, 0].item())  # None -> not applicable
    assert scores.total.tolist() == [0.5, 2.0]


@pytest.mark.parametrize(
    "fn, message",
    [
        ("raises", "reward 'tests.user_rewards:raises' raised ZeroDivisionError"),
        ("wrong_length", "returned 1 values for 2 completions"),
        ("returns_nan", "returned nan for completion 1"),
        ("beyond_float32", r"returned 1e\+39 for completion 1: 'second'; beyond float32's range"),
        ("returns_text", "non-number 'good' for completion 0"),
        ("not_a_list", "returned float"),
    ],
)
def test_bad_user_rewards_name_function_and_sample(fn, message):
    rs = RewardSet([RewardConfig(name=f"tests.user_rewards:{fn}")])
    with pytest.raises(RewardError, match=message.replace("(", r"\(").replace("'", "'")):
        rs.score(["p", "p"], ["first", "second"], [{"answer": "1"}] * 2)


def test_unknown_reward_and_bad_import_path():
    with pytest.raises(RewardError, match="unknown 'acuracy'; known: accuracy, "):
        RewardSet([RewardConfig(name="acuracy")])
    with pytest.raises(RewardError, match="cannot import module 'no_such_mod'"):
        RewardSet([RewardConfig(name="no_such_mod:fn")])
    with pytest.raises(RewardError, match="has no function 'missing'"):
        RewardSet([RewardConfig(name="tests.user_rewards:missing")])


def test_args_are_bound():
    rs = RewardSet([RewardConfig(name="tests.user_rewards:contains", args={"word": "yes"})])
    assert rs.score(["p"] * 2, ["yes sir", "no"], [{}, {}]).total.tolist() == [1.0, 0.0]


def test_recipe_scoring_gives_length_rewards_the_tokenizer_and_the_limit(tiny):
    from thinktune.recipe import load_recipe
    from thinktune.rewards.scoring import recipe_scoring

    _, tokenizer = tiny
    recipe = load_recipe("recipes/demo.yaml", ["grpo.max_new_tokens=8"])
    recipe = recipe.model_copy(update={"rewards": [RewardConfig(name="overlong", args={"buffer": 4})]})
    rewards, _ = recipe_scoring(recipe, None, tokenizer)
    assert rewards.score(["p"] * 2, ["yes " * 4, "yes " * 8], [{"answer": "a"}] * 2).total.tolist() == [0.0, -1.0]


def user(name: str, timeout: float = 60.0) -> RewardConfig:
    return RewardConfig(name=f"tests.user_rewards:{name}", timeout=timeout)


def test_a_reward_that_hangs_is_abandoned_at_its_bound_and_counted():
    import time

    rs = RewardSet([user("yes_fraction"), user("hangs", timeout=0.3)])
    began = time.monotonic()
    scores = rs.score(["p"] * 2, ["yes", "no"], [{}, {}])
    assert time.monotonic() - began < 2.0
    assert scores.total.tolist() == [1.0, 0.0] and math.isnan(scores.per_function[1, 0].item())
    assert scores.incidents == Incidents(reward_timeouts=1)


def test_a_batch_whose_every_bounded_call_timed_out_is_an_error_naming_the_function():
    rs = RewardSet([user("hangs", timeout=0.3)])
    with pytest.raises(RewardError, match=r"every one of the 1 calls .*'tests.user_rewards:hangs' did not return"):
        rs.score(["p"], ["yes"], [{}])


def test_a_slow_reward_within_its_bound_scores_as_usual():
    rs = RewardSet([user("slow_yes", timeout=5.0)])
    scores = rs.score(["p"] * 2, ["yes", "no"], [{}, {}])
    assert scores.total.tolist() == [1.0, 0.0] and scores.incidents == Incidents()


@pytest.mark.parametrize("fn, raised", [("exits", "SystemExit"), ("interrupts", "KeyboardInterrupt")])
def test_exit_and_keyboard_interrupt_from_a_reward_are_errors_naming_it(fn, raised):
    rs = RewardSet([user(fn)])
    with pytest.raises(RewardError, match=f"reward 'tests.user_rewards:{fn}' raised {raised}"):
        rs.score(["p"], ["yes"], [{}])


def test_a_stop_request_abandons_the_reward_being_waited_for():
    import threading
    import time

    from thinktune.rewards.bounded import StopRequested

    class Stop:
        requested = False

    rs = RewardSet([user("hangs")])
    rs.stop = Stop()
    threading.Timer(0.3, lambda: setattr(rs.stop, "requested", True)).start()
    began = time.monotonic()
    with pytest.raises(StopRequested):
        rs.score(["p"], ["yes"], [{}])
    assert time.monotonic() - began < 1.0


def test_a_notebook_lambda_is_bounded_too():
    from thinktune.api import reward

    rs = RewardSet([reward(lambda prompts, completions, **_: [len(c) for c in completions])])
    assert rs.score(["p"], ["four"], [{}]).total.tolist() == [4.0] and rs.bounds == [60.0]


def test_builtin_rewards_are_not_wrapped():
    assert RewardSet([RewardConfig(name="format"), RewardConfig(name="accuracy")]).bounds == [None, None]


def test_a_fresh_process_knows_every_built_in_reward():
    import subprocess
    import sys

    code = "from thinktune.rewards.registry import REWARDS; print(sorted(REWARDS))"
    names = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in ("format", "accuracy", "task_score", "length_tokens", "reward_model", "overlong"):
        assert f"'{name}'" in names
