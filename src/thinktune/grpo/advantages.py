"""Group-relative advantages."""

from __future__ import annotations

import torch


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantage of each completion against its group: ``(r - mean_group) / (std_group + eps)``.

    ``rewards`` is flat, ``[prompts * group_size]``, grouped consecutively. With ``scale=False`` the
    advantage is only centred (Dr. GRPO). Returns the advantages and a bool per group telling whether all its
    rewards were equal (zero std): such a group has zero advantage (exactly) and teaches nothing, so it is counted.

    Worked example, two groups of 2 (std is the unbiased sample std, as in the GRPO paper):

    >>> adv, flat = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5]), 2)
    >>> adv.round(decimals=3), flat
    (tensor([ 0.7070, -0.7070,  0.0000,  0.0000]), tensor([False,  True]))
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(-1, keepdim=True)
    std = grouped.std(-1, keepdim=True)
    advantages = grouped - mean
    if scale:
        advantages = advantages / (std + eps)
    zero_std = (grouped.max(-1).values - grouped.min(-1).values) == 0
    # Exactly zero, not a rounding residue of (r - mean) / eps: the update skips rows with no advantage.
    advantages = advantages.masked_fill(zero_std[:, None], 0.0)
    return advantages.flatten(), zero_std
