"""Bradley-Terry reward model: learns a preference, reports pair accuracy, saves a folder the reward loads."""

import json

import pytest
import torch

from thinktune.config import RewardConfig
from thinktune.data import DataError
from thinktune.pipeline import train
from thinktune.preference import read_pairs
from thinktune.recipe import load_recipe
from thinktune.rewards import RewardSet

WORDS = "one two three four five six seven eight nine zero cat dog".split()


def write_pairs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def rm_recipe(tmp_path, pairs, *overrides):
    return load_recipe(
        None,
        [
            "stages=[reward_model]",
            f"model.name={pairs[1]}",
            "model.lora.r=8",
            f"reward_model.pairs={pairs[0]}",
            "reward_model.eval_pairs=8",
            "reward_model.steps=30",
            "reward_model.batch_size=8",
            "reward_model.learning_rate=0.01",
            f"run.output_dir={tmp_path}",
            "run.name=rm",
            *overrides,
        ],
    )


def test_unusable_pairs_are_counted_and_a_missing_column_is_named(tmp_path):
    rows = [
        {"prompt": "p", "chosen": "yes", "rejected": "no"},
        {"prompt": "p", "chosen": "", "rejected": "no"},
        {"prompt": "p", "chosen": "same", "rejected": " same "},
    ]
    pairs = read_pairs(write_pairs(tmp_path / "p.jsonl", rows))
    assert (len(pairs), pairs.skipped_empty, pairs.skipped_identical) == (1, 1, 1)
    with pytest.raises(DataError, match=r"row 0 has no column 'rejected'"):
        read_pairs(write_pairs(tmp_path / "q.jsonl", [{"prompt": "p", "chosen": "yes"}]))


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_reward_model_learns_the_preference_and_the_reward_loads_it(tmp_path, tiny_model_dir, finetune):
    rows = [{"prompt": f"say {a} {b}", "chosen": f" yes {a}", "rejected": f" no {b}"} for a in WORDS for b in WORDS[:3]]
    path = write_pairs(tmp_path / "pairs.jsonl", rows)
    summary = train(rm_recipe(tmp_path, (path, tiny_model_dir), f"model.finetune={finetune}"))["reward_model"]
    assert summary["pair_accuracy_after"] == 1.0 > summary["pair_accuracy_before"], summary
    folder = tmp_path / "rm" / "reward_model"
    assert (folder / ("adapter_config.json" if finetune == "lora" else "config.json")).is_file()
    reward = RewardSet([RewardConfig(name="reward_model", args={"path": str(folder)})])
    scores = reward.score(["say cat dog"] * 2, [" yes cat", " no dog"], [{"answer": ""}] * 2).total
    assert scores[0] > scores[1]
    if finetune == "lora":
        assert_eval_reports_the_reward_model_score(tmp_path, tiny_model_dir, folder)


def assert_eval_reports_the_reward_model_score(tmp_path, model, reward_model):
    """`thinktune eval --reward-model` adds the score as a measure (weight 0): the total reward is unchanged."""
    from typer.testing import CliRunner

    from thinktune.cli import app

    data = write_pairs(tmp_path / "q.jsonl", [{"question": f"say {w}", "answer": "yes"} for w in WORDS[:4]])
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(
        f"data: {{source: file, path: {data}, eval_size: 2}}\n"
        "rewards: [{name: 'tests.user_rewards:yes_fraction'}]\ngrpo: {max_new_tokens: 4}\n"
    )
    metrics = []
    for extra in ([], ["--reward-model", str(reward_model)]):
        out = tmp_path / "eval.json"
        result = CliRunner().invoke(app, ["eval", model, "--recipe", str(recipe), "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        metrics.append(json.loads(out.read_text())["metrics"])
    assert "reward/reward_model" not in metrics[0] and "reward/reward_model" in metrics[1]
    assert metrics[1]["reward"] == metrics[0]["reward"]


def test_too_few_pairs_for_the_held_out_set(tmp_path, tiny_model_dir):
    path = write_pairs(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "yes", "rejected": "no"}] * 3)
    with pytest.raises(DataError, match=r"3 usable pairs cannot hold out reward_model.eval_pairs=8"):
        train(rm_recipe(tmp_path, (path, tiny_model_dir)))


def test_with_reward_model_replaces_the_recipes_folder_or_adds_a_weightless_measure():
    from thinktune.rewards.scoring import with_reward_model

    recipe = load_recipe(None, ["rewards=[{name: reward_model, weight: 2}, {name: format}]"])
    replaced = with_reward_model(recipe, "rm")
    assert [(r.name, r.weight, r.args) for r in replaced.rewards] == [
        ("reward_model", 2.0, {"path": "rm"}),
        ("format", 1.0, {}),
    ]
    added = with_reward_model(load_recipe(None), "rm").rewards
    assert [r.name for r in added] == ["format", "accuracy", "reward_model"] and added[-1].weight == 0.0


def test_micro_batches_give_the_full_batch_gradient(tmp_path, tiny_model_dir):
    from thinktune.preference import Pairs, accumulate_gradients, load_reward_model_for_training

    recipe = rm_recipe(tmp_path, ("unused", tiny_model_dir), "model.finetune=full")
    model, tokenizer = load_reward_model_for_training(recipe)
    words = [" ".join(WORDS[: n + 1]) for n in range(6)]  # pairs of different lengths: padding differs by batch
    pairs = Pairs(["say"] * 6, [f" yes {w}" for w in words], [f" no {w[:5]}" for w in words])
    grads = []
    for micro in (6, 4, 1):
        model.zero_grad()
        loss, _ = accumulate_gradients(
            model, tokenizer, pairs, recipe.reward_model.model_copy(update={"micro_batch_size": micro})
        )
        grads.append((loss, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
    for loss, grad in grads[1:]:
        assert loss == pytest.approx(grads[0][0], abs=1e-6)
        torch.testing.assert_close(grad, grads[0][1], atol=1e-5, rtol=1e-4)


def test_reward_model_stopped_mid_training_resumes_from_its_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    import os
    import signal

    from thinktune import preference
    from thinktune.training import Interrupted

    rows = [{"prompt": f"say {a}", "chosen": f" yes {a}", "rejected": f" no {a}"} for a in WORDS]
    path = write_pairs(tmp_path / "pairs.jsonl", rows)
    settings = ["reward_model.eval_pairs=4", "reward_model.steps=6", "run.save_every=2"]
    whole = train(rm_recipe(tmp_path, (path, tiny_model_dir), *settings, "run.name=whole"))["reward_model"]

    original, calls = preference.accumulate_gradients, []

    def terminated_in_step_3(*args):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args)

    monkeypatch.setattr(preference, "accumulate_gradients", terminated_in_step_3)
    with pytest.raises(Interrupted, match="stopped after step 3"):
        train(rm_recipe(tmp_path, (path, tiny_model_dir), *settings))
    monkeypatch.undo()
    resumed = train(rm_recipe(tmp_path, (path, tiny_model_dir), *settings), resume=True)["reward_model"]
    losses = [[json.loads(line)["loss"] for line in (tmp_path / run / "reward_model_metrics.jsonl").open()]
              for run in ("rm", "whole")]  # fmt: skip
    assert len(losses[0]) == 6 and losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert resumed["pair_accuracy_after"] == whole["pair_accuracy_after"]


PREAMBLE = "you are a careful assistant: think step by step, check every step twice, then answer. " * 2


@pytest.mark.parametrize("finetune, preamble", [("full", ""), ("lora", ""), ("lora", PREAMBLE)])
def test_shared_prompt_scores_and_gradients_equal_whole_passes(
    tmp_path, tiny_model_dir, monkeypatch, finetune, preamble
):
    """The prompt a pair's answers share runs once; scores and gradients are those of every sequence run whole.
    The pairs cover a rejected answer that is a prefix of the chosen one, a pad token inside an answer, and
    answers of very different lengths; with a preamble, the prefix every pair shares runs once too."""
    from thinktune.preference import Pairs, _pair_scores, bradley_terry_loss, load_reward_model_for_training
    from thinktune.rewards.reward_model import scoring_ids, token_scores

    recipe = rm_recipe(tmp_path, ("unused", tiny_model_dir), f"model.finetune={finetune}")
    model, tokenizer = load_reward_model_for_training(recipe)
    torch.manual_seed(0)
    for p in model.parameters():  # fresh LoRA B matrices are zero, which would hide the adapters' gradients
        p.data += 0.02 * torch.randn_like(p) * p.requires_grad
    pad = tokenizer.pad_token
    prompts = [preamble + p for p in ("count: one two", "say yes", "a b c d e f")]
    chosen = [" three four five six seven", " yes yes" + pad + " yes", " g"]
    rejected = [" three", " no", " h i j k l m n o p q r s t"]
    pairs = Pairs(prompts, chosen, rejected)

    def whole():
        ids = scoring_ids(tokenizer, [p + a for p, a in zip(prompts * 2, chosen + rejected, strict=True)], 128)
        scores = token_scores(model, ids, tokenizer.pad_token_id)
        return scores[:3], scores[3:]

    import thinktune.logprobs

    runs_once = []  # the prefixes' pass: how much of them every pair shares and runs once
    original = thinktune.logprobs.shared_prefix
    monkeypatch.setattr(
        thinktune.logprobs, "shared_prefix", lambda rows: runs_once.append(original(rows)) or runs_once[-1]
    )
    results = []
    for scorer in (whole, lambda: _pair_scores(model, tokenizer, pairs, 128)):
        model.zero_grad()
        good, bad = scorer()
        bradley_terry_loss(good, bad).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((good.detach(), bad.detach(), grads))
    for expected, got in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert results[0][2].abs().sum() > 0
    assert (runs_once[0] > 30) == bool(preamble)


def test_pair_scores_share_the_prompt_where_the_model_allows(tmp_path, tiny_model_dir, monkeypatch):
    """A Llama-family classifier takes the shared path; a pair cut so short that nothing is shared runs whole."""
    from thinktune import preference

    recipe = rm_recipe(tmp_path, ("unused", tiny_model_dir), "model.finetune=full")
    model, tokenizer = preference.load_reward_model_for_training(recipe)
    calls = []
    original = preference.shared_prefix_scores
    monkeypatch.setattr(preference, "shared_prefix_scores", lambda *a: calls.append(a[3]) or original(*a))
    pairs = preference.Pairs(["one two three four"] * 2, [" five", " six six"], [" seven", " eight"])
    preference._pair_scores(model, tokenizer, pairs, 64)
    assert len(calls) == 1 and min(calls[0]) > 0
    preference._pair_scores(model, tokenizer, pairs, 2)  # cut from the left to the answers alone
    assert len(calls) == 1
