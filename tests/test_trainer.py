"""The GRPO trainer's parts on hand-made cases: the loss mask, micro-batch plans, schedules, μ > 1 updates,
epoch batches and the step record."""

import dataclasses

import pytest
import torch

from tests.helpers import build_trainer as build
from thinktune.grpo.batching import MicroBatchPlan, loss_mask
from thinktune.rollout import Rollout
from thinktune.training import EpochBatches, lr_factor, make_scheduler


def rollout(completion_mask, truncated, prompts=None):
    rows = len(completion_mask)
    prompt_ids = torch.tensor(prompts) if prompts is not None else torch.ones(rows, 2, dtype=torch.long)
    mask = torch.tensor(completion_mask)
    return Rollout(prompt_ids, torch.ones_like(prompt_ids), mask.clone(), mask, torch.zeros(mask.shape),
                   torch.tensor(truncated))  # fmt: skip


def test_mask_truncated_drops_every_token_of_a_truncated_completion_only():
    r = rollout([[1, 1, 0], [1, 1, 1], [1, 0, 0]], [False, True, False])
    assert loss_mask(r, mask_truncated=False).tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0]]
    assert loss_mask(r, mask_truncated=True).tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 0]]


def test_plan_trains_rows_with_a_gradient_and_encodes_each_of_their_prompts_once():
    class Settings:
        group_size, micro_batch_size, mask_truncated, beta, max_new_tokens = 2, 2, False, 0.0, 16
        micro_batch_tokens = None

    # prompt 0: rows 0-1 (rewards differ), prompt 1: rows 2-3 (a flat group), prompt 2: rows 4-5
    r = rollout([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 0, 0]], [False] * 6,
                prompts=[[5, 5], [5, 5], [6, 6], [6, 6], [7, 7], [7, 7]])  # fmt: skip
    advantages = torch.tensor([1.0, -1.0, 0.0, 0.0, -0.5, 0.5])
    plan = MicroBatchPlan.build(r, advantages, Settings)
    assert [b.tolist() for b in plan.batches] == [[1, 5], [4, 0]]  # by length: 1, 1, 2, 3 tokens
    assert plan.prompt_ids.tolist() == [[5, 5], [7, 7]] and plan.slot[[0, 1, 4, 5]].tolist() == [0, 0, 1, 1]
    assert plan.totals == {"total_tokens": 11.0, "total_rows": 6, "max_tokens": 16}  # the budget, not the widest
    assert plan.trained_tokens == 7.0 and plan.trained_rows == 4
    Settings.micro_batch_size, Settings.micro_batch_tokens = 4, 3  # rows x longest completion at most 3 tokens
    assert [b.tolist() for b in MicroBatchPlan.build(r, advantages, Settings).batches] == [[1, 5], [4], [0]]
    Settings.beta = 0.04  # with a KL term every row has a gradient
    assert MicroBatchPlan.build(r, advantages, Settings).trained_rows == 6


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("constant", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
        ("linear", [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]),
        ("cosine", [0.5, 1.0, 1.0, 0.853553, 0.5, 0.146447]),
    ],
)
def test_schedules_warm_up_then_decay_to_zero_at_the_last_step(kind, expected):
    assert [lr_factor(s, kind, warmup=2, total=6) for s in range(6)] == pytest.approx(expected, abs=1e-6)
    assert lr_factor(6, kind, warmup=2, total=6) == (1.0 if kind == "constant" else pytest.approx(0.0))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = make_scheduler(optimizer, kind, warmup=2, total=6)
    seen = []
    for _ in range(6):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.1 * e for e in expected], abs=1e-7)


def test_epoch_batches_visit_every_row_once_per_epoch_and_are_seeded():
    batches = EpochBatches(5, seed=3)
    drawn = [batches.next(2) for _ in range(5)]  # two epochs
    flat = [i for batch in drawn for i in batch]
    assert sorted(flat[:5]) == sorted(flat[5:]) == [0, 1, 2, 3, 4]
    assert EpochBatches(5, seed=3).next(10) == flat


def test_several_iterations_take_one_optimizer_step_each_from_the_first_iterations_old_logprobs(
    tmp_path, tiny_model_dir
):
    trainer = build(tmp_path, tiny_model_dir, "grpo.iterations=3", "train.lr_schedule=linear", "train.steps=4")
    groups = trainer.rollout_round(2)
    advantages = torch.tensor([1.0, -1.0] * 8)
    plan = MicroBatchPlan.build(groups.rollout, advantages, trainer.cfg)
    update = trainer.policy_update
    assert update.old_from_update  # μ > 1: the trainer's own numbers, from the first iteration's forward
    recomputed = update.planned_logprobs(groups.rollout, plan, groups.rollout.logprobs)
    torch.testing.assert_close(recomputed, groups.rollout.logprobs, atol=2e-5, rtol=1e-4)  # near the sampler's
    old, ref = update.old_and_reference(groups.rollout, plan)
    assert ref is None and old is not groups.rollout.logprobs
    before = [p.detach().clone() for p in trainer.params]
    stats = update.update(groups.rollout, advantages, plan, old, None)
    assert torch.equal(old, recomputed)  # written by the first iteration, before any optimizer step
    state = trainer.optimizer.state[trainer.params[0]]
    assert state["step"] == 3 and trainer.scheduler.last_epoch == 3  # the schedule counts policy updates
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.params, strict=True))
    assert stats.clip_fraction > 0  # later iterations move away from the sampling policy and get clipped
    assert stats.trained_rows == 1.0


def test_bf16_autocast_takes_old_logprobs_from_its_forward_logs_their_gap_and_keeps_the_float32_gradient(
    tmp_path, tiny_model_dir
):
    grads = {}
    for mode in ("none", "bf16"):
        (tmp_path / mode).mkdir()
        trainer = build(tmp_path / mode, tiny_model_dir, f"train.autocast={mode}")
        groups = trainer.rollout_round(2)  # same seed: the same rollout both times
        plan = MicroBatchPlan.build(groups.rollout, torch.tensor([1.0, -1.0] * 8), trainer.cfg)
        old, _ = trainer.policy_update.old_and_reference(groups.rollout, plan)
        if mode == "none":  # the sampler's own numbers, taken as they are
            assert old is groups.rollout.logprobs
        else:  # μ = 1: a copy, for the update's bf16 forward to overwrite
            assert old is not groups.rollout.logprobs and torch.equal(old, groups.rollout.logprobs)
        params = trainer.params
        # the optimizer only records the (clipped) gradient; the float32 weights get float32 gradients
        trainer.optimizer.step = lambda mode=mode, params=params: grads.__setitem__(
            mode, torch.cat([p.grad.flatten() for p in params])
        )
        stats = trainer.learn(groups.rollout, torch.tensor([1.0, -1.0] * 8))
        assert (stats.logprob_mismatch is not None) == (mode == "bf16")
        assert grads[mode].dtype == torch.float32 and all(p.dtype == torch.float32 for p in params)
    assert 0 < stats.logprob_mismatch < 0.05
    cosine = torch.nn.functional.cosine_similarity(grads["none"], grads["bf16"], dim=0)
    assert cosine > 0.99 and not torch.equal(grads["none"], grads["bf16"])


def test_a_token_budget_runs_the_update_in_more_passes_with_the_same_gradient(tmp_path, tiny_model_dir):
    grads, passes = {}, {}
    for name, budget in (("rows", "null"), ("tokens", "16")):
        (tmp_path / name).mkdir()
        trainer = build(tmp_path / name, tiny_model_dir, f"grpo.micro_batch_tokens={budget}")
        groups = trainer.rollout_round(2)  # same seed: the same rollout both times
        advantages = torch.tensor([1.0, -1.0] * 8)
        plan = MicroBatchPlan.build(groups.rollout, advantages, trainer.cfg)
        widths = [int(groups.rollout.completion_mask[rows].sum(-1).max()) for rows in plan.batches]
        passes[name] = [(len(rows), width) for rows, width in zip(plan.batches, widths, strict=True)]
        params = trainer.params
        trainer.optimizer.step = lambda name=name, params=params: grads.__setitem__(
            name, torch.cat([p.grad.flatten() for p in params])
        )
        trainer.learn(groups.rollout, advantages)
    assert [rows for rows, _ in passes["rows"]] == [8, 8]
    assert len(passes["tokens"]) > 2 and max(rows for rows, _ in passes["tokens"]) == 2
    assert all(rows * width <= 16 for rows, width in passes["tokens"])
    assert sum(rows for rows, _ in passes["tokens"]) == 16
    torch.testing.assert_close(grads["tokens"], grads["rows"], atol=1e-6, rtol=1e-4)


def test_bf16_copies_of_the_frozen_base_give_plain_autocasts_gradient_to_the_bit_and_hand_the_weights_back(
    tmp_path, tiny_model_dir, monkeypatch
):
    """A LoRA update under bf16 autocast reads its frozen base through bfloat16 copies made once: the loss's
    gradient is exactly what autocast's own casts on every pass give, and the model holds its own weights after."""
    import contextlib

    from thinktune import training

    trainer = build(tmp_path, tiny_model_dir, "train.autocast=bf16", "model.finetune=lora")
    weights = dict(trainer.model.named_parameters())
    frozen = [p for p in weights.values() if not p.requires_grad and p.dim() == 2]
    rollout = trainer.rollout_round(2).rollout
    grads = []  # the optimizer only records the gradient: both updates start from the same weights
    trainer.optimizer.step = lambda: grads.append(torch.cat([p.grad.flatten() for p in trainer.params]))
    trainer.learn(rollout, torch.tensor([1.0, -1.0] * 8))
    assert frozen and all(training._BF16_COPIES.get(p)[1].dtype == torch.bfloat16 for p in frozen)
    assert dict(trainer.model.named_parameters()) == weights  # the same tensors, all float32
    assert all(p.dtype == torch.float32 for p in weights.values())
    monkeypatch.setattr(training, "frozen_bf16_weights", lambda model: contextlib.nullcontext())
    trainer.learn(rollout, torch.tensor([1.0, -1.0] * 8))
    assert torch.equal(grads[0], grads[1])


def test_with_one_iteration_the_old_logprobs_are_the_updates_own_forward_the_gradient_a_recompute_gives(
    tmp_path, tiny_model_dir
):
    trainer = build(tmp_path, tiny_model_dir, "rollout.dtype=bfloat16")
    update = trainer.policy_update
    assert update.old_from_update  # μ = 1 and a bfloat16 sampler
    rollout = trainer.rollout_round(2).rollout
    advantages = torch.tensor([1.0, -1.0] * 4 + [0.0] * 8)  # the second group is flat: it does not train
    plan = MicroBatchPlan.build(rollout, advantages, trainer.cfg)
    recomputed = update.planned_logprobs(
        rollout, plan, rollout.logprobs
    )  # a separate pass, as the old log-probs once took
    grads = []
    trainer.optimizer.step = lambda: grads.append(torch.cat([p.grad.flatten() for p in trainer.params]))
    old, _ = update.old_and_reference(rollout, plan)
    from_forward = update.update(rollout, advantages, plan, old, None)
    assert torch.equal(old, recomputed)  # the update wrote its forward's numbers where the recompute would
    update.old_from_update = False  # the recompute's numbers handed in as the old log-probs instead
    separate = update.update(rollout, advantages, plan, recomputed, None)
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0
    assert from_forward.loss == separate.loss and from_forward.clip_fraction == separate.clip_fraction == 0


def test_a_step_records_the_drawn_groups_and_logs_samples(tmp_path, tiny_model_dir):
    trainer = build(tmp_path, tiny_model_dir, "run.samples_per_step=3")
    logged = []
    trainer.tracker.log_samples = lambda step, rows: logged.append((step, rows))
    record = trainer.step(0)
    drawn = trainer.last_drawn
    assert record["step"] == 1 and record["sampled_prompts"] == 4 and record["kept_groups"] == 4
    assert record["reward"] == pytest.approx(drawn.scores.total.mean().item())
    assert record["zero_std_groups"] == pytest.approx(drawn.flat.float().mean().item())
    assert record["completion_length"] == pytest.approx(drawn.rollout.completion_lengths.float().mean().item())
    ((step, rows),) = logged
    assert step == 1 and len(rows) == 3 * 8  # every completion of the first three groups
    assert [r["question"] for r in rows[::8]] == [e.question for e in drawn.examples[:3]]
    row = rows[9]  # the second completion of the second group
    assert row["group"] == 1 and row["completion"] == drawn.completions[9]
    assert row["advantage"] == pytest.approx(drawn.advantages[9].item())
    assert row["length"] == drawn.rollout.completion_lengths[9].item()
    assert row["truncated"] == bool(drawn.rollout.truncated[9])
    name = drawn.scores.names[0]
    assert row[f"reward/{name}"] == pytest.approx(drawn.scores.per_function[0, 9].item())


def test_a_nan_loss_skips_the_update_and_too_many_in_a_row_stop_the_run(tmp_path, tiny_model_dir, monkeypatch):
    from thinktune.grpo import losses
    from thinktune.training import NonFiniteError

    calls = []

    def nan_on_first_steps(inputs):
        out = losses.LOSSES["token"](inputs)
        calls.append(1)
        return dataclasses.replace(out, loss=out.loss * float("nan")) if len(calls) <= bad_calls else out

    monkeypatch.setitem(losses.LOSSES, "nan_first", nan_on_first_steps)
    bad_calls = 1  # the first micro-batch of step 1
    varies = "rewards=[{name: 'tests.user_rewards:length'}]"  # differs inside every group: every step updates
    trainer = build(tmp_path, tiny_model_dir, "grpo.loss=nan_first", "train.max_nonfinite_steps=2", varies)
    before = [p.detach().clone() for p in trainer.params]
    first = trainer.step(0)
    assert first["nonfinite_skipped"] == 1.0 and first["grad_norm"] != first["grad_norm"]  # NaN
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.params, strict=True))
    assert not trainer.optimizer.state  # AdamW never saw the NaN gradient
    second = trainer.step(1)
    assert second["nonfinite_skipped"] == 0.0 and trainer.guard.skipped == 1

    calls.clear()
    bad_calls = 10**6  # every step from now on
    with pytest.raises(NonFiniteError, match=r"step 4: loss nan, gradient norm nan: 2 optimizer steps in a row"):
        for step in range(2, 6):
            trainer.step(step)


def test_a_step_whose_every_grader_call_fails_stops_the_run(tmp_path, tiny_model_dir):
    import json

    from thinktune.rewards import RewardError

    unanswered = tmp_path / "unanswered.jsonl"  # no reference answers: the accuracy metric calls no grader
    unanswered.write_text("".join(json.dumps({"question": f"say {w}", "answer": ""}) + "\n" for w in "abcdefghij"))
    failing = "rewards=[{name: 'tests.user_rewards:grader_always_fails'}]"
    trainer = build(tmp_path, tiny_model_dir, failing, f"data.path={unanswered}")
    with pytest.raises(RewardError, match=r"step 1: every one of the 32 grader calls timed out or failed .*Zero"):
        trainer.stoppable_step(0, stop=None)


def test_completions_no_reward_scores_are_left_out_with_advantage_zero_and_counted(tmp_path, tiny_model_dir):
    trainer = build(tmp_path, tiny_model_dir, "rewards=[{name: 'tests.user_rewards:only_short'}]")  # None past 5 chars
    record = trainer.step(0)
    drawn = trainer.last_drawn
    unscorable = torch.tensor([len(c) > 5 for c in drawn.completions])
    assert 0 < record["unscorable"] == int(unscorable.sum())
    assert torch.equal(drawn.advantages[unscorable], torch.zeros(int(unscorable.sum())))


def test_a_bfloat16_sampler_gets_the_trainers_old_logprobs_and_the_run_still_learns(tmp_path, tiny_model_dir):
    trainer = build(tmp_path, tiny_model_dir, "rollout.dtype=bfloat16", "train.steps=20")
    assert not trainer.policy_update.exact_logprobs
    records = [trainer.step(step) for step in range(20)]
    assert all(0 < r["logprob_mismatch"] < 0.05 for r in records)  # float32 against the bf16 sampler: close
    assert sum(r["reward"] for r in records[-5:]) > sum(r["reward"] for r in records[:5]) + 0.5


@pytest.mark.parametrize("correction", ["tis", "icepop"])
def test_a_rollout_correction_weighs_tokens_where_sampler_and_trainer_differ(tmp_path, tiny_model_dir, correction):
    trainer = build(tmp_path, tiny_model_dir, "train.autocast=bf16", f"rollout.correction={correction}")
    groups = trainer.rollout_round(2)
    stats = trainer.learn(groups.rollout, torch.tensor([1.0, -1.0] * 8))
    assert 0 < stats.logprob_mismatch < 0.05  # bf16 against the float32 sampler: close, not equal
    if correction == "tis":
        assert stats.correction_weight != 1.0 and stats.correction_masked == 0.0
        assert 0.9 < stats.correction_weight < 1.1
    else:
        assert stats.correction_weight == 1 - stats.correction_masked and stats.correction_masked < 0.05


def test_planned_logprobs_cover_the_trained_rows_each_prompt_once_equal_to_whole_sequences(tmp_path, tiny_model_dir):
    from thinktune.logprobs import rollout_logprobs

    trainer = build(tmp_path, tiny_model_dir, "rollout.dtype=bfloat16")
    rollout = trainer.rollout_round(2).rollout
    advantages = torch.tensor([1.0, -1.0] * 4 + [0.0] * 8)  # the second prompt's group is flat: it does not train
    plan = MicroBatchPlan.build(rollout, advantages, trainer.cfg)
    old = trainer.policy_update.planned_logprobs(rollout, plan, rollout.logprobs)  # as the reference's are taken
    whole = rollout_logprobs(trainer.model, rollout, 16)  # every row, prompt and completion in one sequence
    torch.testing.assert_close(old[:8], whole[:8], atol=2e-5, rtol=1e-4)
    assert torch.equal(old[8:], rollout.logprobs[8:])  # untrained rows keep the sampler's numbers
    assert not torch.equal(old[:8], rollout.logprobs[:8])  # bfloat16 sampler: recomputed, not the same


def test_autocast_auto_is_bf16_only_where_bfloat16_matmuls_pay(monkeypatch):
    from thinktune import environment
    from thinktune.training import autocast, autocast_mode

    cpu, layer = torch.device("cpu"), torch.nn.Linear(2, 2)
    monkeypatch.setattr(environment, "bf16_matmul_speedup", lambda: 0.8)  # a CPU whose bf16 runs slower
    assert autocast_mode("auto", cpu) == "none" and autocast_mode("bf16", cpu) == "bf16"
    with autocast(layer, "auto"):
        assert layer(torch.ones(1, 2)).dtype == torch.float32
    monkeypatch.setattr(environment, "bf16_matmul_speedup", lambda: 3.5)
    assert autocast_mode("auto", cpu) == "bf16" and autocast_mode("auto", torch.device("cuda")) == "bf16"
    with autocast(layer, "auto"):
        assert layer(torch.ones(1, 2)).dtype == torch.bfloat16


@pytest.mark.parametrize("ignore_eos, length", [(False, 1), (True, 8)])
def test_ignore_eos_runs_every_training_completion_to_the_budget(tmp_path, tiny_model_dir, ignore_eos, length):
    trainer = build(tmp_path, tiny_model_dir, f"grpo.ignore_eos={str(ignore_eos).lower()}")
    trainer.backend.eos_ids = list(range(trainer.model.config.vocab_size))  # every token ends a completion
    groups = trainer.rollout_round(2)
    assert groups.rollout.completion_lengths.tolist() == [length] * 16  # grpo.max_new_tokens=8
