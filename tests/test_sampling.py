"""Prompt sampling: the per-epoch order, the pass-rate curriculum, and DAPO's dynamic sampling."""

import json

import pytest

from tests.test_learning import rewards, tiny_recipe
from thinktune.grpo.sampling import PromptSampler
from thinktune.pipeline import train


def test_without_curriculum_draws_are_slices_of_each_epochs_shuffle():
    sampler = PromptSampler(5, seed=3)
    draws = [sampler.draw(2) for _ in range(5)]  # 10 prompts: two full epochs
    flat = [i for d in draws for i in d]
    assert sorted(flat[:5]) == sorted(flat[5:]) == list(range(5))
    assert flat[:5] != flat[5:]  # each epoch has its own order
    again = PromptSampler(5, seed=3)
    assert [again.draw(2) for _ in range(5)] == draws  # deterministic


def test_curriculum_prefers_prompts_sometimes_solved_and_keeps_its_books():
    sampler = PromptSampler(10, seed=0, curriculum="pass_rate", floor=0.05)
    for index in sampler.draw(10):  # first epoch: every prompt unseen, all taken
        sampler.observe(index, 0.5 if index < 2 else 1.0)
    assert sampler.rejected == 0 and len(sampler.pass_rate) == 10
    later = [i for _ in range(50) for i in sampler.draw(1)]
    # Prompts 0 and 1 have weight 1, the other eight 0.05: 2 / (2 + 8 * 0.05) = 83% of draws expected,
    # against 20% uniformly.
    assert sum(i < 2 for i in later) > 30
    assert sampler.rejected > 0
    sampler.observe(0, 1.0)
    assert sampler.pass_rate[0] == 0.75  # the running mean of 0.5 and 1.0


def test_sampler_state_round_trips():
    sampler = PromptSampler(7, seed=1, curriculum="pass_rate")
    for index in sampler.draw(7):
        sampler.observe(index, index / 7)
    state = sampler.state_dict()
    expected = [sampler.draw(3) for _ in range(4)]
    restored = PromptSampler(7, seed=1, curriculum="pass_rate")
    restored.load_state_dict(state)
    assert [restored.draw(3) for _ in range(4)] == expected


def scripted_recipe(tmp_path, tiny_model_dir, questions, *overrides):
    data = tmp_path / "scripted.jsonl"
    data.write_text("\n".join(json.dumps({"question": q, "answer": "yes"}) for q in questions))
    return tiny_recipe(
        tmp_path,
        tiny_model_dir,
        f"data.path={data}",
        "data.eval_size=1",
        "rewards=[{name: 'tests.user_rewards:flat_unless_mixed'}]",
        "grpo.prompts_per_step=2",
        "grpo.dynamic_sampling=true",
        "grpo.max_sampling_rounds=3",
        "train.steps=4",
        *overrides,
    )


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_dynamic_sampling_fills_the_step_with_groups_that_have_spread(tmp_path, tiny_model_dir):
    # 3 of 13 questions give groups with spread; the last row is held out.
    questions = [f"mixed {i}" for i in range(3)] + [f"flat {i}" for i in range(9)] + ["flat held out"]
    train(scripted_recipe(tmp_path, tiny_model_dir, questions))
    for m in metrics(tmp_path / "tiny"):
        assert m["sampling_rounds"] <= 3
        assert m["sampled_prompts"] >= m["kept_groups"]
        assert m["kept_fraction"] == pytest.approx(m["kept_groups"] / m["sampled_prompts"])
        assert m["kept_groups"] + m["sampling_shortfall"] == 2
        assert m["trained_rows"] == 1.0  # only groups with spread are trained on
        assert m["zero_std_groups"] == pytest.approx(1 - m["kept_groups"] / m["sampled_prompts"], abs=0.35)
    assert sum(m["kept_groups"] for m in metrics(tmp_path / "tiny")) >= 6  # most steps were filled
    assert sum(m["sampled_prompts"] for m in metrics(tmp_path / "tiny")) > 8  # it drew more than 2 a step
    summary = json.loads((tmp_path / "tiny" / "summary.json").read_text())
    steps = metrics(tmp_path / "tiny")
    assert summary["prompts_drawn_per_step"] == pytest.approx(sum(m["sampled_prompts"] for m in steps) / len(steps))
    assert summary["flat_group_rate"] == pytest.approx(sum(m["zero_std_groups"] for m in steps) / len(steps))


def test_dynamic_sampling_stops_at_the_round_bound_and_reports_the_shortfall(tmp_path, tiny_model_dir):
    questions = [f"flat {i}" for i in range(9)]
    train(scripted_recipe(tmp_path, tiny_model_dir, questions, "train.steps=2"))
    for m in metrics(tmp_path / "tiny"):
        assert m["sampling_rounds"] == 3
        assert m["kept_groups"] == 0 and m["sampling_shortfall"] == 2
        assert m["trained_rows"] == 0 and m["grad_norm"] == 0
        # round 1 draws 2; later rounds draw the shortfall over the kept share (floored at 1/4): 8 each
        assert m["sampled_prompts"] == 2 + 8 + 8


def steps_to_reach(curve, threshold, window=3):
    for end in range(window, len(curve) + 1):
        if sum(curve[end - window : end]) / window >= threshold:
            return end
    return len(curve) + 1


def test_dynamic_sampling_learns_in_fewer_steps(tmp_path, tiny_model_dir):
    plain = tiny_recipe(tmp_path, tiny_model_dir, "run.name=plain", "train.steps=25")
    dynamic = tiny_recipe(tmp_path, tiny_model_dir, "run.name=dynamic", "train.steps=25", "grpo.dynamic_sampling=true")
    train(plain)
    train(dynamic)
    plain_steps = steps_to_reach(rewards(tmp_path / "plain"), 0.4)
    dynamic_steps = steps_to_reach(rewards(tmp_path / "dynamic"), 0.4)
    assert dynamic_steps < plain_steps, (rewards(tmp_path / "plain"), rewards(tmp_path / "dynamic"))
