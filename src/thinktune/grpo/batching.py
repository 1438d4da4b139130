"""How one GRPO update walks a rollout: which rows train, in which micro-batches, normalised by what."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from thinktune.distributed import Ranks
from thinktune.rollout import Rollout
from thinktune.tokens import length_groups


def micro_batches(
    lengths: torch.Tensor, advantages: torch.Tensor, size: int, skip_zero_advantage: bool, tokens: int | None = None
) -> list[torch.Tensor]:
    """Row indices per micro-batch: rows that can move the policy, sorted by completion length, at most ``size``
    rows a pass and, with ``tokens``, at most that many completion tokens (rows x the longest; a longer row runs
    alone).

    With no KL term a row of advantage 0 has loss and gradient exactly 0 (``min(r·0, clip(r)·0)``), so
    leaving it out changes nothing but the time; every row of a group whose rewards are all equal is such a
    row. Similar lengths side by side waste little compute on padding.

    >>> micro_batches(torch.tensor([9, 2, 5, 7]), torch.tensor([1.0, 0.0, -1.0, 0.5]), 2, skip_zero_advantage=True)
    [tensor([2, 3]), tensor([0])]
    >>> micro_batches(torch.tensor([9, 2, 5, 7]), torch.ones(4), 4, skip_zero_advantage=True, tokens=14)
    [tensor([1, 2]), tensor([3]), tensor([0])]
    """
    rows = torch.arange(advantages.numel())
    if skip_zero_advantage:
        rows = rows[advantages != 0]
    groups = length_groups(rows.tolist(), lengths.tolist(), tokens, max_rows=size)
    return [torch.tensor(group) for group in groups]


def loss_mask(rollout: Rollout, mask_truncated: bool) -> torch.Tensor:
    """1.0 on the completion tokens that enter the loss; with ``mask_truncated``, none of a truncated row's.

    >>> r = Rollout(*[torch.zeros(2, 1)] * 2, torch.zeros(2, 3), torch.tensor([[1, 1, 0], [1, 1, 1]]),
    ...             torch.zeros(2, 3), torch.tensor([False, True]))
    >>> loss_mask(r, mask_truncated=True).tolist()
    [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    """
    mask = rollout.completion_mask.float()
    if mask_truncated:
        mask = mask * (~rollout.truncated)[:, None].float()
    return mask


@dataclass
class MicroBatchPlan:
    """The micro-batches of one update and the totals the loss normalises by.

    ``slot[row]`` is the place of the row's prompt among ``prompt_ids``/``prompt_mask``, the prompts of the
    trained rows, each once: they are encoded once per update and shared by their rows (``SharedPrompts``).
    """

    mask: torch.Tensor  # [N, C] loss mask
    batches: list[torch.Tensor]  # row indices per micro-batch (rows with a gradient only)
    totals: dict[str, float]  # total_tokens, total_rows, max_tokens (grpo.max_new_tokens): the losses' normalisers
    trained_tokens: float  # loss tokens of the trained rows
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    slot: torch.Tensor  # [N]

    @classmethod
    def build(cls, rollout: Rollout, advantages: torch.Tensor, cfg) -> MicroBatchPlan:
        """The plan for ``rollout`` under the ``grpo`` settings ``cfg``; a row of advantage 0 trains only under
        a KL term."""
        mask = loss_mask(rollout, cfg.mask_truncated)
        n = mask.shape[0]
        lengths = rollout.completion_mask.sum(-1).cpu()  # the plan's row indices live on the CPU, whatever the device
        skip = cfg.beta == 0
        batches = micro_batches(lengths, advantages.cpu(), cfg.micro_batch_size, skip, tokens=cfg.micro_batch_tokens)
        trained = torch.cat(batches) if batches else torch.zeros(0, dtype=torch.long)
        prompt_of_row = torch.arange(n) // cfg.group_size
        needed = prompt_of_row[trained].unique()
        first_rows = needed * cfg.group_size
        return cls(
            mask=mask,
            batches=batches,
            # dr_grpo's length is the generation budget, not this step's longest completion: a constant (Dr. GRPO)
            totals={"total_tokens": mask.sum().clamp(min=1).item(), "total_rows": n, "max_tokens": cfg.max_new_tokens},
            trained_tokens=mask[trained].sum().clamp(min=1).item(),
            prompt_ids=rollout.prompt_ids[first_rows],
            prompt_mask=rollout.prompt_mask[first_rows],
            slot=torch.searchsorted(needed, prompt_of_row),
        )

    def across(self, ranks: Ranks) -> MicroBatchPlan:
        """With several processes, the normalisers of the whole step (every process's tokens and rows), so the
        summed gradients are those of one process training on all of it."""
        if ranks.world > 1:
            t = self.totals
            self.totals = {"total_tokens": ranks.sum(t["total_tokens"]), "total_rows": ranks.sum(t["total_rows"]),
                           "max_tokens": ranks.max(t["max_tokens"])}  # fmt: skip
            self.trained_tokens = ranks.sum(self.trained_tokens)
        return self

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def trained_rows(self) -> int:
        return sum(b.numel() for b in self.batches)
