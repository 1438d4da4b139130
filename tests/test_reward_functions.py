"""Each built-in reward function on hand-made cases."""

import math

import pytest

from thinktune.config import RewardConfig
from thinktune.rewards import REWARDS, RewardError, RewardSet
from thinktune.rewards.answers import accuracy_reward, math_equal
from thinktune.rewards.extract import extract_answer
from thinktune.rewards.formatting import format_reward, format_soft_reward

XML = "<reasoning>\n{r}\n</reasoning>\n<answer>\n{a}\n</answer>"


def score(name, completions, **kw):
    return REWARDS[name](["p"] * len(completions), completions, **kw)


def test_gsm8k_strict_and_flexible_follow_lm_eval_conventions():
    completions = [
        "48/2 = 24, 48 + 24 = 72\n#### 72",  # both
        "#### 72 and later #### 5",  # strict takes the first marker, flexible the last number
        "She sold $1,234. in total",  # flexible ignores , $ and the trailing .
        "The answer is seventy-two",  # neither
    ]
    answers = ["72", "72", "1234", "72"]
    assert score("gsm8k_strict", completions, answer=answers) == [1.0, 1.0, 0.0, 0.0]
    assert score("gsm8k_flexible", completions, answer=answers) == [1.0, 0.0, 1.0, 0.0]


def test_accuracy_compares_values_not_strings():
    completions = [XML.format(r="", a=a) for a in ("\\frac{1}{2}", "0.5", "\\boxed{\\frac{2}{4}}", "1/3")]
    assert score("accuracy", completions, answer=["0.5"] * 4) == [1.0, 1.0, 1.0, 0.0]


def test_numeric_closeness_prefers_near_misses():
    got = score("numeric_closeness", [XML.format(r="", a=a) for a in ("72", "73", "1072", "n/a")], answer=["72"] * 4)
    assert got[0] == 1.0 and got[1] == pytest.approx(math.exp(-1 / 7.2)) and got[2] < 1e-6 and got[3] == 0.0
    assert got[1] > got[2]
    assert score("numeric_closeness", ["<answer>1</answer>"], answer=["Paris"]) == [None]


def test_integer_and_tag_count():
    assert score("integer", ["<answer>12</answer>", "<answer>1.5</answer>", "<answer></answer>"]) == [1.0, 0.0, 0.0]
    good = XML.format(r="2 + 2 = 4", a="4")
    twice = good + "\n<answer>\n5\n</answer>"  # the answer tags twice: their shares are lost
    trailing = good + " and more"  # 9 characters after the end cost 0.009
    assert score("tag_count", [good, twice, trailing, ""]) == [1.0, 0.5, 0.991, 0.0]
    assert score("tag_count", ["<think>x</think> 4", "<think>x"], answer_format="think") == [1.0, 0.5]


def test_length_rewards(tiny):
    _, tokenizer = tiny  # word-level: one token per word
    assert score("length_chars", ["x" * 100, "x" * 150, ""], ideal=100) == [1.0, 0.5, 0.0]
    five, ten, fifteen = "yes " * 5, "yes " * 10, "yes " * 15
    got = score("length_tokens", [five, ten, fifteen], target=10, over_weight=2.0, tokenizer=tokenizer)
    assert got == [0.5, 1.0, 0.0]  # 5 short costs 0.5; 5 over costs twice as much
    got = score(
        "overlong", ["yes " * 6, "yes " * 9, "yes " * 10, "yes " * 30], max_new_tokens=10, buffer=2, tokenizer=tokenizer
    )
    assert got == [0.0, -0.5, -1.0, -1.0]


def test_length_tokens_without_a_tokenizer_is_a_clear_error():
    with pytest.raises(RewardError, match=r"reward 'length_tokens' raised ValueError: needs the model's tokenizer"):
        RewardSet([RewardConfig(name="length_tokens")]).score(["p"], ["c"], [{"answer": "a"}])


# ----------------------------------------------------------------------------- hostile completions


def test_reward_model_scores_are_its_single_logit_and_two_labels_are_refused(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for labels in (1, 2):
        model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=labels)
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp_path / f"rm{labels}")
        tokenizer.save_pretrained(tmp_path / f"rm{labels}")
    rewards = RewardSet([RewardConfig(name="reward_model", args={"path": str(tmp_path / "rm1"), "batch_size": 2})])
    prompts, completions = ["what is two plus two", "calculate"], [" four", " the answer is four yes yes"]
    got = rewards.score(prompts, completions, [{"answer": ""}] * 2).total

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm1").eval()
    with torch.no_grad():  # one text at a time, no padding: the batched, padded scores must match
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        expected = [model(**tokenizer(t, return_tensors="pt")).logits[0, 0].item() for t in texts]
    assert got.tolist() == pytest.approx(expected, abs=1e-5)
    assert got[0] != got[1]

    two = RewardSet([RewardConfig(name="reward_model", args={"path": str(tmp_path / "rm2")})])
    with pytest.raises(RewardError, match=r"needs a sequence-classification head with 1 label, it has 2"):
        two.score(["p"], ["c"], [{"answer": ""}])


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


def test_an_answer_followed_by_pages_of_chatter_is_still_found():
    chatter = " I double-checked this carefully." * 17  # 561 characters after the answer
    completion = "<think>7 = 3 + 4</think> So the answer is \\boxed{7}." + chatter
    assert accuracy_reward(None, [completion], answer=["7"], answer_format="think") == [1.0]
    buried = "<think>x</think> \\boxed{7}" + "." * 20_001  # past the grader's 20,000-character bound
    assert accuracy_reward(None, [buried], answer=["7"], answer_format="think") == [0.0]


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
