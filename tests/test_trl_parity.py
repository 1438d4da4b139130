"""thinktune's losses against TRL's own loss code (``GRPOTrainer._compute_loss`` of TRL 1.16), on the same float64
log-probs, masks and advantages: the loss and its gradient agree to 1e-9, with one micro-batch and with two.

TRL's method is called unbound on a stand-in for the trainer that holds only the settings it reads; its forward
pass (``_get_per_token_logps_and_entropies``) returns our tensors. Everything after that is TRL's code.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from thinktune.grpo.losses import LOSSES, LossInputs, high_entropy_mask

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")

ROWS, WIDTH, BUDGET = 16, 9, 12  # lengths 1..9; BUDGET is grpo.max_new_tokens (TRL's max_completion_length)
TOLERANCE = 1e-9


class OneProcess:
    """The few accelerate calls the loss makes, for a single process."""

    num_processes, sync_gradients = 1, True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def pad_across_processes(self, x, dim=0, pad_index=0):
        return x

    def reduce(self, x, reduction="sum"):
        return x


def batch(seed: int = 0) -> dict:
    """16 rows of lengths 1-9 whose ratios are far enough from 1 that most tokens fall outside the clip range."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.arange(ROWS) % WIDTH + 1
    mask = (torch.arange(WIDTH)[None, :] < lengths[:, None]).double()
    old = -torch.rand(ROWS, WIDTH, generator=g, dtype=torch.float64) * 3
    return {
        "logprobs": old + torch.randn(ROWS, WIDTH, generator=g, dtype=torch.float64) * 0.4,
        "old": old,
        "ref": old + torch.randn(ROWS, WIDTH, generator=g, dtype=torch.float64) * 0.2,
        "advantages": torch.randn(ROWS, generator=g, dtype=torch.float64),
        "mask": mask,
        "entropy": torch.rand(ROWS, WIDTH, generator=g, dtype=torch.float64) * 4,
    }


def trl_loss(b: dict, rows, loss_type: str, *, beta=0.0, eps=0.2, eps_high=0.2, level="token", quantile=1.0,
             weights=None, micro_batches=1) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """TRL's loss on ``rows`` (one of ``micro_batches`` equal accumulation steps) and its gradient."""
    logprobs = b["logprobs"][rows].clone().requires_grad_(True)
    trainer = SimpleNamespace(
        top_entropy_quantile=quantile,
        off_policy_mask_threshold=None,
        importance_sampling_level=level,
        beta=beta,
        loss_type=loss_type,
        epsilon_low=eps,
        epsilon_high=eps_high,
        use_vllm=weights is not None,  # TRL multiplies by its vLLM importance-sampling ratio then
        vllm_importance_sampling_correction=True,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=micro_batches,
        max_completion_length=BUDGET,
        accelerator=OneProcess(),
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=micro_batches),
        aux_loss_enabled=False,
        _entropy_bonus_enabled=False,
        _metrics={"train": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *a, **k: (logprobs, b["entropy"][rows], None),
    )
    trainer.get_high_entropy_mask = lambda e, m, t: trl_grpo.GRPOTrainer.get_high_entropy_mask(trainer, e, m, t)
    mask = b["mask"][rows]
    inputs = {
        "prompt_ids": torch.zeros(len(rows), 1, dtype=torch.long),
        "prompt_mask": torch.ones(len(rows), 1, dtype=torch.long),
        "completion_ids": torch.zeros(len(rows), WIDTH, dtype=torch.long),
        "completion_mask": mask,
        "advantages": b["advantages"][rows],
        "old_per_token_logps": b["old"][rows],
        "ref_per_token_logps": b["ref"][rows],
        "num_items_in_batch": b["mask"].sum(),  # the whole generation's tokens
        "importance_sampling_ratio": None if weights is None else weights[rows],
    }
    loss = trl_grpo.GRPOTrainer._compute_loss(trainer, None, inputs)
    loss.backward()
    return loss.detach(), logprobs.grad


def our_loss(b: dict, rows, loss: str, *, beta=0.0, eps=0.2, eps_high=0.2, level="token", quantile=1.0,
             weights=None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """thinktune's loss on ``rows`` with the step's totals, as the trainer calls it, and its gradient."""
    logprobs = b["logprobs"][rows].clone().requires_grad_(True)
    mask = b["mask"][rows]
    weight = None if weights is None else weights[rows]
    if quantile < 1:
        chosen = high_entropy_mask(b["entropy"][rows], mask, quantile)
        weight = chosen if weight is None else weight * chosen
    out = LOSSES[loss](
        LossInputs(
            logprobs=logprobs,
            old_logprobs=b["old"][rows],
            advantages=b["advantages"][rows],
            mask=mask,
            ref_logprobs=b["ref"][rows],
            beta=beta,
            epsilon_low=eps,
            epsilon_high=eps_high,
            total_tokens=b["mask"].sum().item(),
            total_rows=ROWS,
            max_tokens=BUDGET,
            importance_sampling=level,
            weights=weight,
        )
    )
    out.loss.backward()
    return out.loss.detach(), logprobs.grad


# (thinktune loss, its settings) <-> (TRL loss_type, its settings); where a definition differs on purpose, the
# settings say how: TRL's cispo clamps the ratio at epsilon_high itself, thinktune at 1 + epsilon_high.
PAIRS = {
    "token = dapo": (("token", {}), ("dapo", {})),
    "sequence = grpo": (("sequence", {}), ("grpo", {})),
    "dr_grpo = dr_grpo": (("dr_grpo", {}), ("dr_grpo", {})),
    "token, epsilon_high 0.28 = dapo": (("token", {"eps_high": 0.28}), ("dapo", {"eps_high": 0.28})),
    "token, beta 0.04 = dapo": (("token", {"beta": 0.04}), ("dapo", {"beta": 0.04})),
    "sequence, beta 0.04 = grpo": (("sequence", {"beta": 0.04}), ("grpo", {"beta": 0.04})),
    "GSPO: sequence ratios, sequence loss = grpo": (
        ("sequence", {"level": "sequence", "eps": 3e-4, "eps_high": 4e-4}),
        ("grpo", {"level": "sequence", "eps": 3e-4, "eps_high": 4e-4}),
    ),
    "GSPO: sequence ratios, token loss = dapo": (("token", {"level": "sequence"}), ("dapo", {"level": "sequence"})),
    "cispo, bound 1 + 0.3 = cispo, epsilon_high 1.3": (("cispo", {"eps_high": 0.3}), ("cispo", {"eps_high": 1.3})),
    "cispo with a KL term = cispo": (
        ("cispo", {"eps_high": 0.5, "beta": 0.04}),
        ("cispo", {"eps_high": 1.5, "beta": 0.04}),
    ),
    "token, top 20% entropy = dapo": (("token", {"quantile": 0.2}), ("dapo", {"quantile": 0.2})),
    "sequence, top 50% entropy = grpo": (("sequence", {"quantile": 0.5}), ("grpo", {"quantile": 0.5})),
}  # fmt: skip


@pytest.mark.parametrize("micro_batches", [1, 2])
@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_each_loss_equals_trls_in_value_and_gradient(pair, micro_batches):
    (ours, our_settings), (theirs, their_settings) = PAIRS[pair]
    if micro_batches == 2 and "quantile" in our_settings:
        pytest.skip("the entropy quantile is taken per micro-batch by both; one micro-batch compares it whole")
    b = batch()
    parts = torch.arange(ROWS).chunk(micro_batches)  # equal halves: TRL averages its accumulation steps
    our_total, their_total = torch.zeros(()), torch.zeros(())
    our_grad, their_grad = torch.zeros(ROWS, WIDTH, dtype=torch.float64), torch.zeros(ROWS, WIDTH, dtype=torch.float64)
    for rows in parts:
        loss, grad = our_loss(b, rows, ours, **our_settings)
        our_total, our_grad[rows] = our_total + loss, grad
        loss, grad = trl_loss(b, rows, theirs, micro_batches=micro_batches, **their_settings)
        their_total, their_grad[rows] = their_total + loss, grad
    assert abs(our_total - their_total).item() < TOLERANCE, (our_total.item(), their_total.item())
    assert (our_grad - their_grad).abs().max().item() < TOLERANCE


def test_the_batch_is_a_hard_one():
    """Most tokens lie outside the clip range, and some past CISPO's bounds, so clipping is exercised."""
    b = batch()
    ratio = torch.exp(b["logprobs"] - b["old"])[b["mask"].bool()]
    assert ((ratio < 0.8) | (ratio > 1.2)).double().mean() > 0.5 and (ratio > 1.5).double().mean() > 0.1


def test_a_rollout_correction_weight_is_applied_as_trls_vllm_importance_ratio():
    from thinktune.config import RolloutConfig
    from thinktune.grpo.losses import correction_weights

    b = batch()
    sampler = b["old"] + torch.randn(ROWS, WIDTH, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weights = correction_weights(b["old"], sampler, RolloutConfig(correction="tis"))  # TRL's token_truncate
    rows = torch.arange(ROWS)
    ours, our_grad = our_loss(b, rows, "token", weights=weights)
    theirs, their_grad = trl_loss(b, rows, "dapo", weights=weights)
    assert abs(ours - theirs).item() < TOLERANCE and (our_grad - their_grad).abs().max().item() < TOLERANCE


def test_dr_grpos_normaliser_is_the_generation_budget_whatever_the_lengths():
    """The issue's case: max_new_tokens 16, completions of 3, 1, 10 and 3 tokens. TRL divides by rows × 16."""
    from thinktune.grpo.batching import MicroBatchPlan
    from thinktune.rollout import Rollout

    lengths = torch.tensor([3, 1, 10, 3])
    mask = (torch.arange(10)[None, :] < lengths[:, None]).long()
    prompt, ids = torch.zeros(4, 1, dtype=torch.long), torch.zeros(4, 10, dtype=torch.long)
    rollout = Rollout(prompt, prompt + 1, ids, mask, torch.zeros(4, 10), torch.zeros(4, dtype=torch.bool))
    settings = SimpleNamespace(
        group_size=2, micro_batch_size=8, micro_batch_tokens=None, mask_truncated=False, beta=0.0, max_new_tokens=16
    )
    plan = MicroBatchPlan.build(rollout, torch.tensor([1.0, -1.0, 1.0, -1.0]), settings)
    assert plan.totals["max_tokens"] == 16  # not 10, the step's longest completion
