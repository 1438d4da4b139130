import math

import pytest
import torch

from thinktune.grpo.losses import LOSSES, LossInputs, k3_kl, per_token_objective


def inputs(logprobs, old, adv, mask, **kw):
    return LossInputs(
        logprobs=torch.tensor(logprobs),
        old_logprobs=torch.tensor(old),
        advantages=torch.tensor(adv),
        mask=torch.tensor(mask, dtype=torch.float32),
        **kw,
    )


def test_ratio_one_gives_minus_advantage_per_token():
    x = inputs([[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [1.0, -2.0], [[1, 1], [1, 0]])
    # per-token losses: [-1, -1] and [2, (masked)]
    assert LOSSES["token"](x).loss.item() == pytest.approx((-1 - 1 + 2) / 3)
    assert LOSSES["sequence"](x).loss.item() == pytest.approx((-1 + 2) / 2)
    assert LOSSES["dr_grpo"](x).loss.item() == pytest.approx((-1 - 1 + 2) / 4)


def test_clipping_positive_and_negative_advantage():
    up, down = math.log(1.5), math.log(0.5)
    # A > 0, ratio 1.5 -> clipped at 1.2; A < 0, ratio 0.5 -> clipped at 0.8 (loss -(0.8 * -1) = 0.8)
    x = inputs([[up], [down]], [[0.0], [0.0]], [1.0, -1.0], [[1], [1]])
    out = per_token_objective(x)
    assert out.per_token_loss[:, 0].tolist() == pytest.approx([-1.2, 0.8])
    assert out.clipped.tolist() == [[True], [True]]
    # inside the trust region nothing is clipped
    x = inputs([[math.log(1.1)]], [[0.0]], [1.0], [[1]])
    assert not per_token_objective(x).clipped.any()


def test_separate_upper_clip():
    x = inputs([[math.log(1.5)]], [[0.0]], [1.0], [[1]], epsilon_low=0.2, epsilon_high=0.28)
    assert per_token_objective(x).per_token_loss.item() == pytest.approx(-1.28)


def test_k3_kl_and_beta():
    assert k3_kl(torch.tensor([-1.0]), torch.tensor([0.0])).item() == pytest.approx(math.e - 2)
    x = inputs([[-1.0]], [[-1.0]], [0.0], [[1]], ref_logprobs=torch.tensor([[0.0]]), beta=0.5)
    assert LOSSES["token"](x).loss.item() == pytest.approx(0.5 * (math.e - 2))


def test_gradient_pushes_up_positive_advantage_tokens():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    x = LossInputs(logp, logp.detach(), torch.tensor([1.0]), torch.tensor([[1.0, 0.0]]))
    LOSSES["token"](x).loss.backward()
    assert logp.grad[0, 0] < 0  # descending the loss raises that token's log-prob
    assert logp.grad[0, 1] == 0  # masked token gets no gradient


def test_micro_batches_add_up_to_full_batch():
    torch.manual_seed(0)
    logp, old = torch.randn(4, 5) * 0.1 - 1, torch.randn(4, 5) * 0.1 - 1
    adv, mask = torch.randn(4), (torch.rand(4, 5) > 0.3).float()
    for name in LOSSES:
        full = LOSSES[name](LossInputs(logp, old, adv, mask)).loss
        totals = dict(total_tokens=mask.sum().item(), total_rows=4, max_tokens=5)
        parts = sum(
            LOSSES[name](LossInputs(logp[s], old[s], adv[s], mask[s], **totals)).loss
            for s in (slice(0, 2), slice(2, 4))
        )
        assert parts.item() == pytest.approx(full.item(), abs=1e-6), name


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_row_of_zero_advantage_has_zero_gradient_without_kl(name):
    # The update leaves such rows out (grpo.batching.micro_batches); that is exact only while this holds.
    logprobs = torch.tensor([[-0.5, -1.0], [-0.2, -3.0]], requires_grad=True)
    x = LossInputs(logprobs, torch.tensor([[-0.7, -0.4], [-0.1, -2.0]]), torch.tensor([0.0, 1.0]), torch.ones(2, 2))
    LOSSES[name](x).loss.backward()
    assert torch.equal(logprobs.grad[0], torch.zeros(2))
    assert logprobs.grad[1].abs().sum() > 0
