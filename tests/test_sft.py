"""SFT: the loss falls on completion tokens, the result is a plain HF folder, and `train` chains SFT then GRPO."""

import json
from types import SimpleNamespace

import pytest
import torch

from thinktune.config import ConfigError, ModelConfig
from thinktune.data import DataError
from thinktune.models import load_policy
from thinktune.pipeline import train
from thinktune.recipe import load_recipe
from thinktune.sft import completion_loss


def sft_recipe(tmp_path, tiny_model_dir, *overrides):
    data = tmp_path / "worked.jsonl"
    rows = [{"question": f"say {w}", "answer": w, "why": "yes"} for w in "one two three four five six seven".split()]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    return load_recipe(
        None,
        [
            f"model.name={tiny_model_dir}",
            "model.finetune=lora",
            "model.lora.r=8",
            "data.source=file",
            f"data.path={data}",
            "data.eval_size=2",
            "data.system_prompt=''",
            "sft.completion='{why} {answer}'",
            "sft.steps=25",
            "sft.batch_size=4",
            "sft.learning_rate=0.01",
            "rewards=[{name: 'tests.user_rewards:yes_fraction'}]",
            "grpo.group_size=4",
            "grpo.prompts_per_step=2",
            "grpo.max_new_tokens=4",
            "train.steps=2",
            f"run.output_dir={tmp_path}",
            "run.name=chain",
            *overrides,
        ],
    )


def test_completion_loss_counts_target_tokens_only(tiny_model_dir):
    model, tokenizer = load_policy(ModelConfig(name=tiny_model_dir, finetune="full", device="cpu"))
    pad = tokenizer.pad_token_id
    prompts, targets = [[8, 9, 10], [11]], [[12, 13], [14, 15, 16]]
    loss = completion_loss(model, prompts, targets, pad)
    by_hand = []
    for prompt, target in zip(prompts, targets, strict=True):  # one sequence at a time, no padding
        ids = torch.tensor([prompt + target])
        logp = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
        by_hand += [logp[i, t] for i, t in enumerate(target)]
    assert loss.item() == pytest.approx(-torch.stack(by_hand).mean().item(), abs=1e-5)


def test_passes_by_length_give_the_whole_batch_loss_and_gradient(tiny_model_dir):
    """Whatever sft.micro_batch_tokens splits a batch into, the loss and gradient are the batch's, computed one
    unpadded example at a time by hand."""
    from thinktune.distributed import SINGLE
    from thinktune.parallel import Parallel
    from thinktune.sft import SFTData, accumulate_loss

    model, tokenizer = load_policy(ModelConfig(name=tiny_model_dir, finetune="full", device="cpu"))
    torch.manual_seed(0)
    data = SFTData(
        [torch.randint(8, len(tokenizer), (n,)).tolist() for n in (3, 1, 7, 2, 5)],
        [torch.randint(8, len(tokenizer), (n,)).tolist() for n in (2, 6, 1, 4, 3)],
    )
    rows, tokens = [4, 0, 2, 1], sum(len(data.targets[i]) for i in (4, 0, 2, 1))
    model.zero_grad()
    nll = []
    for i in rows:
        ids = torch.tensor([data.prompts[i] + data.targets[i]])
        logp = model(input_ids=ids).logits[0, len(data.prompts[i]) - 1 : -1].log_softmax(-1)
        nll += [-logp[j, t] for j, t in enumerate(data.targets[i])]
    expected = torch.stack(nll).sum() / tokens
    expected.backward()
    expected_grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    for budget in (10_000, 16, 1):  # one pass; two or three; one example per pass
        model.zero_grad()
        loss = accumulate_loss(
            model, Parallel(model, SINGLE), data, rows, tokens, SimpleNamespace(micro_batch_tokens=budget), tokenizer
        )
        assert loss == pytest.approx(expected.item(), abs=1e-5)
        grad = torch.cat([p.grad.flatten() for p in model.parameters()])
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-4)


def test_a_prefix_every_prompt_shares_runs_once_with_the_same_loss_and_gradient(tiny_model_dir, monkeypatch):
    from thinktune.logprobs import SharedPrompts

    model, tokenizer = load_policy(ModelConfig(name=tiny_model_dir, finetune="full", device="cpu"))
    preamble = torch.arange(8, 48).tolist()  # 40 tokens in each of 3 prompts: run once, 80 positions fewer
    prompts, targets = [preamble + [50], preamble + [51, 52, 53], preamble + [54, 55]], [[60, 61], [62], [63, 64, 65]]
    model.zero_grad()
    nll = []
    for prompt, target in zip(prompts, targets, strict=True):  # one sequence at a time, no padding
        logp = model(input_ids=torch.tensor([prompt + target])).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
        nll += [-logp[i, t] for i, t in enumerate(target)]
    expected = torch.stack(nll).mean()
    expected.backward()
    expected_grad = torch.cat([p.grad.flatten() for p in model.parameters()])

    encoded = []
    encode = SharedPrompts.encode.__func__
    monkeypatch.setattr(SharedPrompts, "encode", classmethod(lambda cls, m, ids, *a, **k: encoded.append(ids.tolist())
                                                             or encode(cls, m, ids, *a, **k)))  # fmt: skip
    model.zero_grad()
    loss = completion_loss(model, prompts, targets, tokenizer.pad_token_id)
    loss.backward()
    assert encoded == [[preamble]]  # the prefix's pass, once
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    torch.testing.assert_close(torch.cat([p.grad.flatten() for p in model.parameters()]), expected_grad,
                               atol=1e-5, rtol=1e-4)  # fmt: skip


def test_sft_then_grpo_in_one_run(tmp_path, tiny_model_dir):
    recipe = sft_recipe(tmp_path, tiny_model_dir, "stages=[sft, grpo]")
    summary = train(recipe)
    run = tmp_path / "chain"
    losses = [json.loads(line)["loss"] for line in (run / "sft_metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 25 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 / 2, losses
    # the SFT model is a plain HF folder (LoRA merged) and says the taught target
    assert (run / "sft" / "config.json").is_file() and not (run / "sft" / "adapter_config.json").exists()
    sft_eval = json.loads((run / "eval_sft.json").read_text())
    assert all(s["completion"].startswith("yes") for s in sft_eval["samples"]), sft_eval["samples"]
    before = json.loads((run / "eval_before.json").read_text())
    assert before.pop("made_by") != sft_eval.pop("made_by")  # made of the SFT folder as GRPO's starting model
    assert before == sft_eval  # GRPO's before is the SFT model
    assert (run / "eval_base.json").is_file() and (run / "comparison_sft.md").is_file()
    assert summary["sft"]["last_loss"] < summary["sft"]["first_loss"]
    # GRPO started from the SFT folder and saved its adapter over it
    adapter = json.loads((run / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(run / "sft")
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_template_field_the_data_lacks_is_named(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match=r"sft.completion: example 0 has no field 'solution'.*'why'"):
        train(sft_recipe(tmp_path, tiny_model_dir, "stages=[sft]", "sft.completion='{solution}'"))


def test_targets_all_over_budget_is_a_clear_error(tmp_path, tiny_model_dir):
    usable = r"none of the 5 examples is usable: 5 targets over sft.max_completion_tokens=1"
    with pytest.raises(DataError, match=usable):
        train(sft_recipe(tmp_path, tiny_model_dir, "stages=[sft]", "sft.max_completion_tokens=1"))


def test_resume_after_a_finished_sft_stage_goes_straight_to_grpo(tmp_path, tiny_model_dir):
    train(sft_recipe(tmp_path, tiny_model_dir, "stages=[sft]", "sft.steps=3", "eval.before=false"))
    run = tmp_path / "chain"
    assert not (run / "metrics.jsonl").exists()
    train(sft_recipe(tmp_path, tiny_model_dir, "stages=[sft, grpo]", "sft.steps=3", "eval.before=false"), resume=True)
    assert len((run / "sft_metrics.jsonl").read_text().splitlines()) == 3  # not trained again
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_sft_on_chat_conversations(tmp_path, tiny_model_dir):
    chats = tmp_path / "chats.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": f"yes {w}"}]}
        for w in "one two three four five six seven".split()
    ]
    chats.write_text("\n".join(json.dumps(r) for r in rows))
    chat = ["data.source=chat", f"data.path={chats}", "sft.completion='{response}'"]
    train(sft_recipe(tmp_path, tiny_model_dir, "stages=[sft]", *chat))
    samples = json.loads((tmp_path / "chain" / "eval_sft.json").read_text())["samples"]
    assert all(s["completion"].startswith("yes") for s in samples), samples
    assert [s["answer"] for s in samples] == ["yes six", "yes seven"]  # the response is the reference


def test_a_chat_row_without_an_assistant_reply_is_named(tmp_path, tiny_model_dir):
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match=r"chats.jsonl: row 0 has no user turn followed by an assistant turn"):
        train(sft_recipe(tmp_path, tiny_model_dir, "stages=[sft]", "data.source=chat", f"data.path={chats}"))


def test_sft_stopped_mid_training_resumes_from_its_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    import os
    import signal

    from thinktune import sft
    from thinktune.training import Interrupted

    overrides = ["stages=[sft]", "sft.steps=8", "run.save_every=3", "eval.before=false", "eval.after=false"]
    train(sft_recipe(tmp_path, tiny_model_dir, *overrides, "run.name=whole"))

    original = sft.completion_loss
    calls = []

    def terminated_in_step_5(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # step 5 finishes, is checkpointed, then the run stops
        return original(*args, **kwargs)

    monkeypatch.setattr(sft, "completion_loss", terminated_in_step_5)
    with pytest.raises(Interrupted, match="stopped after step 5"):
        train(sft_recipe(tmp_path, tiny_model_dir, *overrides))
    monkeypatch.undo()
    with (tmp_path / "chain" / "sft_metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # a line cut short
    train(sft_recipe(tmp_path, tiny_model_dir, *overrides), resume=True)

    def records(run):
        return [json.loads(line) for line in (tmp_path / run / "sft_metrics.jsonl").open()]

    assert [r["step"] for r in records("chain")] == list(range(1, 9))  # each step once
    assert [r["loss"] for r in records("chain")] == pytest.approx([r["loss"] for r in records("whole")], abs=1e-5)
