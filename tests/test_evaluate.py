"""Sampled evaluation: k completions per problem, graded and summarised consistently with the counts."""

import pytest

from thinktune.config import RewardConfig
from thinktune.data import Example, PromptBuilder
from thinktune.evaluation import Sampling, evaluate
from thinktune.rewards import RewardSet
from thinktune.rewards.scoring import TaskMetrics
from thinktune.rollout import NativeBackend, SamplingParams


class EvenLength(TaskMetrics):
    """Right when the completion has an even number of characters: about half of the tiny model's samples."""

    def accuracy(self, completions, examples):
        return [float(len(c) % 2 == 0) for c in completions]


def run(tiny, sampling):
    model, tokenizer = tiny
    examples = [Example(f"say {w}", "yes") for w in "one two three four five six".split()]
    return evaluate(
        NativeBackend(model, tokenizer),
        examples,
        PromptBuilder(tokenizer, system_prompt=""),
        RewardSet([RewardConfig(name="tests.user_rewards:yes_fraction")]),
        EvenLength("xml"),
        max_new_tokens=6,
        batch_size=8,
        sampling=sampling,
    )


def test_sampled_metrics_agree_with_the_per_problem_counts(tiny):
    result = run(tiny, Sampling(SamplingParams(6, group_size=4, temperature=1.5), seed=0))
    counts = [s["correct_of_4"] for s in result.samples]
    m = result.metrics
    assert len(counts) == 6 and all(0 <= c <= 4 for c in counts)
    assert 0 < sum(counts) < 24
    assert m["mean@4"] == pytest.approx(sum(counts) / 24)
    assert m["pass@4"] == pytest.approx(sum(c > 0 for c in counts) / 6)
    assert m["all_wrong@4"] == pytest.approx(sum(c == 0 for c in counts) / 6)
    assert m["mean@4"] <= m["pass@2"] <= m["pass@4"]
    assert {"maj@4", "format@4", "accuracy"} <= m.keys()
    # Seeded: the same model draws the same samples again.
    assert run(tiny, Sampling(SamplingParams(6, group_size=4, temperature=1.5), seed=0)).metrics == m


def test_greedy_only_without_sampling(tiny):
    result = run(tiny, None)
    assert not any("@" in key for key in result.metrics)
    assert "correct_of_4" not in result.samples[0]


def test_significance_notes_pair_greedy_outcomes_and_sample_counts():
    from thinktune.before_after import significance_notes

    def evaluation(correct, counts):
        samples = [{"correct": c, "format": 1.0, "correct_of_4": k} for c, k in zip(correct, counts, strict=True)]
        return {"split": "validation", "metrics": {"n": 4, "accuracy": sum(correct) / 4, "format_accuracy": 1.0},
                "samples": samples}  # fmt: skip

    before = evaluation([0, 0, 1, 1], [0, 1, 4, 2])
    after = evaluation([1, 1, 1, 0], [2, 3, 4, 1])
    notes, tests = significance_notes(before, after)
    assert tests["accuracy"] == {"fixed": 2, "broken": 1, "p_value": 1.0}
    assert tests["mean@4"]["fixed"] == 2 and tests["mean@4"]["broken"] == 1  # 0->2, 1->3 up; 2->1 down; 4 tie
    assert notes[0].startswith("accuracy on 4 validation problems: 0.500")


def test_eval_dtype_model_grades_the_policy_in_its_own_dtype_whatever_the_sampler_computes_in(tiny):
    from thinktune import load_recipe
    from thinktune.rollout import evaluation_backend, make_backend

    model, tokenizer = tiny
    recipe = load_recipe("recipes/demo.yaml", ["rollout.dtype=bfloat16", "eval.dtype=rollout"])
    sampler = make_backend(recipe.rollout, model, tokenizer)
    assert sampler.dtype is not None  # the training sampler computes in bfloat16
    assert evaluation_backend(recipe, model, tokenizer, sampler) is sampler  # as it samples
    own = evaluation_backend(load_recipe(recipe, ["eval.dtype=model"]), model, tokenizer, sampler)
    assert own.dtype is None  # the policy's float32
    prompts = [tokenizer(f"say {w}").input_ids for w in ("one", "two", "three")]
    greedy = SamplingParams(8, greedy=True)
    float32 = NativeBackend(model, tokenizer).generate(prompts, greedy)
    out = own.generate(prompts, greedy)
    assert out.completion_ids.equal(float32.completion_ids) and out.logprobs.equal(float32.logprobs)
    assert not sampler.generate(prompts, greedy).logprobs.equal(float32.logprobs)  # bfloat16 grades otherwise
    vllm = load_recipe(recipe, ["eval.dtype=model", "rollout.backend=vllm"])
    assert evaluation_backend(vllm, model, tokenizer, sampler) is sampler  # another engine: its own numbers
