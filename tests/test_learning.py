"""GRPO learns: a tiny model trained from scratch raises a simple reward within a few dozen steps."""

import json
from pathlib import Path

import pytest

from thinktune.config import load_recipe
from thinktune.pipeline import train


def tiny_recipe(tmp_path, tiny_model_dir, *overrides):
    data = tmp_path / "prompts.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"question": f"say {w}", "answer": "yes"})
            for w in "one two three four five six seven eight nine zero cat dog".split()
        )
    )
    return load_recipe(
        None,
        [
            f"model.name={tiny_model_dir}",
            "model.finetune=full",
            "data.source=file",
            f"data.path={data}",
            "data.eval_size=4",
            "data.system_prompt=''",
            "rewards=[{name: 'tests.user_rewards:yes_fraction'}]",
            "grpo.group_size=8",
            "grpo.prompts_per_step=4",
            "grpo.max_new_tokens=8",
            "train.learning_rate=0.003",
            "train.steps=30",
            "eval.before=false",
            "eval.after=false",
            f"run.output_dir={tmp_path}",
            "run.name=tiny",
            *overrides,
        ],
    )


def rewards(run_dir: Path) -> list[float]:
    return [json.loads(line)["reward"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_grpo_raises_the_reward(tmp_path, tiny_model_dir):
    train(tiny_recipe(tmp_path, tiny_model_dir))
    r = rewards(tmp_path / "tiny")
    first, last = sum(r[:5]) / 5, sum(r[-5:]) / 5
    assert first < 0.2, r
    assert last > first + 0.3, r


def test_lora_with_kl_learns_and_saves_a_peft_adapter(tmp_path, tiny_model_dir):
    train(
        tiny_recipe(
            tmp_path,
            tiny_model_dir,
            "model.finetune=lora",
            "grpo.beta=0.01",
            "train.learning_rate=0.01",
            "grpo.loss=sequence",
            "grpo.iterations=2",
        )
    )
    r = rewards(tmp_path / "tiny")
    assert sum(r[-5:]) / 5 > sum(r[:5]) / 5 + 0.2, r
    metrics = [json.loads(line) for line in (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["kl"] > 0
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    PeftModel.from_pretrained(base, tmp_path / "tiny" / "final")  # plain peft loads it


@pytest.mark.parametrize(
    "sampling",
    [[], ["grpo.dynamic_sampling=true", "grpo.curriculum=pass_rate"]],
    ids=["plain", "dynamic-sampling-and-curriculum"],
)
def test_resume_continues_where_it_stopped(tmp_path, tiny_model_dir, sampling):
    recipe = tiny_recipe(tmp_path, tiny_model_dir, "train.steps=4", "run.save_every=2", *sampling)
    train(recipe)
    full = rewards(tmp_path / "tiny")
    # a second run stopped after step 2, then resumed, must give the same curve (the prompt sampler's position
    # and pass rates come back with the checkpoint)
    interrupted = tiny_recipe(
        tmp_path, tiny_model_dir, "train.steps=2", "run.save_every=2", "run.name=tiny2", *sampling
    )
    train(interrupted)
    resumed = tiny_recipe(tmp_path, tiny_model_dir, "train.steps=4", "run.save_every=2", "run.name=tiny2", *sampling)
    train(resumed, resume=True)
    assert rewards(tmp_path / "tiny2") == pytest.approx(full, abs=1e-5)


def test_existing_run_is_not_overwritten(tmp_path, tiny_model_dir):
    from thinktune.runs import RunError

    with pytest.raises(RunError, match="holds nothing to resume from"):
        train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=1"), resume=True)
    train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=1"))
    with pytest.raises(RunError, match="already holds a run; pass --resume"):
        train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=1"))
