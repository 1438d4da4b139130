import pytest
import torch

from thinktune.grpo.advantages import group_advantages


def test_hand_computed_groups():
    # group 1: rewards 1, 0, 0, 1 -> mean 0.5, unbiased std sqrt(1/3) = 0.5774
    adv, zero = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]), 4)
    expected = 0.5 / (0.57735 + 1e-4)
    assert torch.allclose(adv[:4], torch.tensor([expected, -expected, -expected, expected]), atol=1e-4)
    assert torch.equal(adv[4:], torch.zeros(4))  # zero-std group: no signal
    assert zero.tolist() == [False, True]


def test_unscaled_is_only_centred():
    adv, _ = group_advantages(torch.tensor([3.0, 1.0, 5.0, 5.0]), 2, scale="none")
    assert adv.tolist() == [1.0, -1.0, 0.0, 0.0]


def test_groups_must_divide():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(4), 3)


def test_a_flat_group_has_exactly_zero_advantage_not_a_rounding_residue():
    # (0.3 - mean) / (std + eps) leaves 3e-4 in float32 for eight equal 0.3 rewards; the update skips such rows.
    adv, flat = group_advantages(torch.full((8,), 0.3), 8)
    assert flat.tolist() == [True]
    assert torch.equal(adv, torch.zeros(8))


def test_batch_scaling_divides_by_the_whole_batchs_std():
    rewards = torch.tensor([1.0, 0.0, 3.0, 1.0])
    adv, _ = group_advantages(rewards, 2, scale="batch")
    std = rewards.std().item()  # unbiased, over all four: TRL's scale_rewards="batch"
    assert adv.tolist() == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 1 / (std + 1e-4), -1 / (std + 1e-4)])


def test_unscorable_completions_are_left_out_of_the_statistics_with_advantage_zero():
    # TRL 1.16's advantages for rewards [1, 0, None, 1] in one group of 4, as the issue measured them
    ok = torch.tensor([True, True, False, True])
    adv, flat = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4, scorable=ok)
    assert adv.tolist() == pytest.approx([0.577, -1.155, 0.0, 0.577], abs=1e-3) and flat.tolist() == [False]
    _, flat = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, scorable=torch.tensor([True] + [False] * 3))
    assert flat.tolist() == [True]  # one scored completion: nothing to compare it with


def test_an_unknown_scale_is_refused_and_the_schema_offers_exactly_the_registered_ones():
    from typing import get_args

    from thinktune.config import GRPOConfig
    from thinktune.grpo.advantages import SCALES

    with pytest.raises(ValueError, match="grpo.scale_rewards: unknown 'std'; known: group, batch, none"):
        group_advantages(torch.zeros(4), 2, scale="std")
    assert get_args(GRPOConfig.model_fields["scale_rewards"].annotation) == tuple(SCALES)
