"""The reward library on hand-made cases, and every grader on hostile completions."""

import math
import threading
import time

import pytest

from thinktune.config import RewardConfig
from thinktune.rewards import REWARDS, RewardError, RewardSet
from thinktune.rewards.guard import GRADER, BoundedCalls

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


def test_recipe_scoring_gives_length_rewards_the_tokenizer_and_the_limit(tiny):
    from thinktune.config import load_recipe
    from thinktune.evaluate import recipe_scoring

    _, tokenizer = tiny
    recipe = load_recipe("recipes/demo.yaml", ["grpo.max_new_tokens=8"])
    recipe = recipe.model_copy(update={"rewards": [RewardConfig(name="overlong", args={"buffer": 4})]})
    rewards, _ = recipe_scoring(recipe, None, tokenizer)
    assert rewards.score(["p"] * 2, ["yes " * 4, "yes " * 8], [{"answer": "a"}] * 2).total.tolist() == [0.0, -1.0]


# ----------------------------------------------------------------------------- hostile completions
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
        (value,) = score(name, [completion], answer=["1"])
        assert value is None or math.isfinite(value), (name, value)
    assert time.perf_counter() - start < 3 * GRADER.seconds  # at most one time-out per case


def test_power_tower_is_wrong_not_a_hang_even_off_the_main_thread():
    # math-verify's own time-out relies on signals, which only the main thread receives.
    result = []
    worker = threading.Thread(target=lambda: result.append(score("accuracy", [HOSTILE["power tower"]], answer=["1"])))
    worker.start()
    worker.join(timeout=3 * GRADER.seconds)
    assert not worker.is_alive() and result == [[0.0]]


def test_a_grader_over_its_bound_is_killed_counted_and_replaced():
    bounded = BoundedCalls(seconds=0.5, preload=())
    assert bounded.call(time.sleep, 30, default="timed out") == "timed out"
    assert bounded.counts() == (1, 0)
    assert bounded.call(divmod, 7, 2) == (3, 1)  # a fresh process answers the next call
    assert bounded.call(divmod, 1, 0, default=-1) == -1  # an exception scores the default, counted as an error
    assert bounded.counts() == (1, 1) and "ZeroDivisionError" in bounded.last_error


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
