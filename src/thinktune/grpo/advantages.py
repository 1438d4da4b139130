"""Group-relative advantages."""

from __future__ import annotations

import torch

from thinktune.registry import Registry


def nanstd(values: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """The unbiased standard deviation of the non-NaN ``values`` (NaN where fewer than two).

    >>> nanstd(torch.tensor([1.0, float("nan"), 3.0])), nanstd(torch.tensor([1.0, float("nan")]))
    (tensor(1.4142), tensor(nan))
    """
    if dim is None:
        values, dim = values.flatten(), 0
    if not values.isnan().any():  # torch's own, to the bit
        return values.std(dim=dim, keepdim=keepdim)
    count = (~values.isnan()).sum(dim=dim, keepdim=True)
    squares = (values - values.nanmean(dim=dim, keepdim=True)) ** 2
    variance = squares.nansum(dim=dim, keepdim=True) / (count - 1).clamp(min=1)
    std = variance.sqrt().masked_fill(count < 2, float("nan"))
    return std if keepdim else std.squeeze(dim)


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale: str = "group",
    scorable: torch.Tensor | None = None,
    eps: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantage of each completion against its group: ``(r - mean_group) / (std + eps)``.

    ``rewards`` is flat, ``[prompts * group_size]``, grouped consecutively. ``scale`` says what std divides:
    ``group`` (the group's own, GRPO), ``batch`` (the whole batch's, TRL's ``scale_rewards="batch"``) or ``none``
    (only centred: Dr. GRPO). Both stds are the unbiased sample std, as in the GRPO paper and TRL.

    ``scorable`` (bool per completion, default all) marks completions some reward function scored: one every
    function returned None for is left out of its group's mean and std (and the batch's) and gets advantage 0,
    as TRL does.

    Returns the advantages and a bool per group telling whether all its scored rewards were equal (zero std):
    such a group has zero advantage (exactly) and teaches nothing, so it is counted.

    Worked example, two groups of 2:

    >>> adv, flat = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5]), 2)
    >>> adv.round(decimals=3), flat
    (tensor([ 0.7070, -0.7070,  0.0000,  0.0000]), tensor([False,  True]))

    One group, rewards [1, 0, None, 1]: the mean and std of (1, 0, 1) are 2/3 and 0.577:

    >>> r, ok = torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([True, True, False, True])
    >>> group_advantages(r, 4, scorable=ok)[0].round(decimals=3)
    tensor([ 0.5770, -1.1550,  0.0000,  0.5770])
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    spread_of = SCALES.lookup(scale)
    grouped = rewards.view(-1, group_size)
    if scorable is not None and scorable.all():
        scorable = None  # the plain reductions, to the bit
    if scorable is not None:
        grouped = grouped.masked_fill(~scorable.view(-1, group_size), float("nan"))
    mean = grouped.nanmean(-1, keepdim=True) if scorable is not None else grouped.mean(-1, keepdim=True)
    advantages = grouped - mean
    if spread_of is not None:
        advantages = advantages / (spread_of(grouped).nan_to_num(0.0) + eps)
    spread = grouped.nan_to_num(-torch.inf).max(-1).values - grouped.nan_to_num(torch.inf).min(-1).values
    zero_std = ~(spread > 0)  # also a group with fewer than two scored completions
    # Exactly zero, not a rounding residue of (r - mean) / eps: the update skips rows with no advantage.
    advantages = advantages.masked_fill(zero_std[:, None], 0.0).nan_to_num(0.0)
    return advantages.flatten(), zero_std


def shared_advantages(rewards: torch.Tensor, group_size: int, scale: str, scorable: torch.Tensor, ranks):
    """:func:`group_advantages` of this process's ``rewards`` when ``ranks.world`` processes hold equal shares of
    a batch. Advantages are per group, except under ``scale: batch``, where the std of every process's rewards
    divides; then the whole batch is gathered and this process keeps its rows, so the advantages are exactly one
    process's on the whole batch."""
    if scale != "batch" or ranks.world == 1:
        return group_advantages(rewards, group_size, scale, scorable)
    parts = ranks.gather((rewards, scorable))
    advantages, flat = group_advantages(torch.cat([r for r, _ in parts]), group_size, scale,
                                        torch.cat([s for _, s in parts]))  # fmt: skip
    first = ranks.rank * rewards.numel()
    rows = slice(first, first + rewards.numel())
    return advantages[rows], flat[first // group_size : (first + rewards.numel()) // group_size]


# grpo.scale_rewards -> the spread the centred rewards ``[groups, G]`` are divided by (None: only centred)
SCALES = Registry(
    "grpo.scale_rewards",
    {
        "group": lambda grouped: nanstd(grouped, dim=-1, keepdim=True),  # GRPO: each group's own std
        "batch": lambda grouped: nanstd(grouped.flatten()),  # TRL's scale_rewards="batch": the whole batch's std
        "none": None,  # Dr. GRPO
    },
)
