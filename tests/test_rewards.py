import math

import pytest

from thinktune.config import RewardConfig
from thinktune.rewards import RewardError, RewardSet
from thinktune.rewards.answers import accuracy_reward, math_equal
from thinktune.rewards.extract import extract_answer
from thinktune.rewards.formatting import format_reward, format_soft_reward

GOOD = "<reasoning>\n12 + 5 = 17\n</reasoning>\n<answer>\n17\n</answer>"


def test_strict_and_soft_format():
    sloppy = "Sure. <reasoning>12+5</reasoning><answer>17</answer> done"
    assert format_reward(None, [GOOD, sloppy, "17"]) == [1.0, 0.0, 0.0]
    assert format_soft_reward(None, [GOOD, sloppy, "17"]) == [1.0, 1.0, 0.0]
    think = "<think>12 + 5 is 17</think> 17"
    assert format_reward(None, [think, "<think>x</think>"], answer_format="think") == [1.0, 0.0]


def test_extract_answer():
    assert extract_answer(GOOD) == "17"
    assert extract_answer("<answer> 3 </answer> then <answer>4</answer>") == "4"  # the last one counts
    assert extract_answer("<answer>\n5") == "5"  # cut off before the closing tag
    assert extract_answer("no tags") is None
    assert extract_answer("<think>a</think> 42", "think") == "42"


def test_math_equivalence():
    assert math_equal("0.5", "\\frac{1}{2}")
    assert math_equal("-4", "-4.0")
    assert not math_equal("3", "4")
    assert accuracy_reward(None, [GOOD, GOOD.replace("17", "18"), "17"], answer=["17"] * 3) == [1.0, 0.0, 0.0]


def test_accuracy_survives_hostile_answer():
    nasty = "<answer>" + "{" * 5000 + "</answer>"
    assert accuracy_reward(None, [nasty, "<answer>\\frac{1}{0}</answer>"], answer=["1", "1"]) == [0.0, 0.0]


def test_task_score_uses_reasoning_gym_scorer():
    import reasoning_gym

    ds = reasoning_gym.create_dataset("basic_arithmetic", size=1, seed=3)
    entry = ds[0]
    rs = RewardSet([RewardConfig(name="task_score")], {"task_dataset": ds})
    right = f"<answer>{entry['answer']}</answer>"
    scores = rs.score(["p", "p"], [right, "<answer>nonsense</answer>"], [entry, entry])
    assert scores.per_function[0].tolist() == [1.0, 0.0]


def test_weighted_sum_and_none_is_masked():
    rs = RewardSet(
        [RewardConfig(name="format", weight=0.5), RewardConfig(name="tests.user_rewards:only_short", weight=2.0)]
    )
    scores = rs.score(["p"] * 2, [GOOD, "x"], [{"answer": "17"}] * 2)
    assert math.isnan(scores.per_function[1, 0].item())  # None -> not applicable
    assert scores.total.tolist() == [0.5, 2.0]


@pytest.mark.parametrize(
    "fn, message",
    [
        ("raises", "reward 'tests.user_rewards:raises' raised ZeroDivisionError"),
        ("wrong_length", "returned 1 values for 2 completions"),
        ("returns_nan", "returned nan for completion 1"),
        ("returns_text", "non-number 'good' for completion 0"),
        ("not_a_list", "returned float"),
    ],
)
def test_bad_user_rewards_name_function_and_sample(fn, message):
    rs = RewardSet([RewardConfig(name=f"tests.user_rewards:{fn}")])
    with pytest.raises(RewardError, match=message.replace("(", r"\(").replace("'", "'")):
        rs.score(["p", "p"], ["first", "second"], [{"answer": "1"}] * 2)


def test_unknown_reward_and_bad_import_path():
    with pytest.raises(RewardError, match="unknown reward 'acuracy'"):
        RewardSet([RewardConfig(name="acuracy")])
    with pytest.raises(RewardError, match="cannot import module 'no_such_mod'"):
        RewardSet([RewardConfig(name="no_such_mod:fn")])
    with pytest.raises(RewardError, match="has no function 'missing'"):
        RewardSet([RewardConfig(name="tests.user_rewards:missing")])


def test_args_are_bound():
    rs = RewardSet([RewardConfig(name="tests.user_rewards:contains", args={"word": "yes"})])
    assert rs.score(["p"] * 2, ["yes sir", "no"], [{}, {}]).total.tolist() == [1.0, 0.0]
