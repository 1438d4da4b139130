"""Policy losses, in a registry so a recipe picks one by name (``grpo.loss``).

Every loss receives per-token tensors of shape ``[batch, completion_tokens]`` and returns a scalar plus
statistics. The per-token objective is PPO's clipped surrogate with GRPO's group advantages,

    ratio  = exp(logp - old_logp)
    obj    = min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)
    kl_k3  = exp(ref_logp - logp) - (ref_logp - logp) - 1          (only when beta > 0)
    per_token_loss = -(obj - beta * kl_k3)

and the losses differ only in how they average per-token values (the normaliser).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class LossInputs:
    logprobs: torch.Tensor  # [B, T] current policy, differentiable
    old_logprobs: torch.Tensor  # [B, T] the policy that generated the batch
    advantages: torch.Tensor  # [B]
    mask: torch.Tensor  # [B, T] 1 for completion tokens that count
    ref_logprobs: torch.Tensor | None = None  # [B, T] reference policy, when beta > 0
    beta: float = 0.0
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    # Normaliser of token-summed losses: tokens in the whole step (token loss) or its rows x max length
    # (dr_grpo), so that micro-batches add up to the full-batch loss. None = this micro-batch's own.
    total_tokens: float | None = None
    total_rows: float | None = None
    max_tokens: int | None = None


@dataclass
class LossOutput:
    loss: torch.Tensor
    per_token_loss: torch.Tensor
    clipped: torch.Tensor  # [B, T] bool: the clip bound was active
    kl: torch.Tensor | None


LOSSES: dict[str, Callable[[LossInputs], LossOutput]] = {}


def register_policy_loss(name: str):
    def wrap(fn):
        LOSSES[name] = fn
        return fn

    return wrap


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(policy || reference), per token; >= 0 and unbiased.

    >>> k3_kl(torch.tensor([0.0]), torch.tensor([0.0])), k3_kl(torch.tensor([-1.0]), torch.tensor([0.0]))
    (tensor([0.]), tensor([0.7183]))
    """
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1


def per_token_objective(x: LossInputs) -> LossOutput:
    """The clipped surrogate (and KL) per token, before any averaging.

    Worked example: A = 1, ratio = e^0.5 ≈ 1.65 with eps = 0.2 → the clipped term 1.2 wins, loss -1.2:

    >>> x = LossInputs(torch.tensor([[0.5]]), torch.tensor([[0.0]]), torch.tensor([1.0]), torch.tensor([[1]]))
    >>> out = per_token_objective(x); out.per_token_loss, out.clipped
    (tensor([[-1.2000]]), tensor([[True]]))
    """
    ratio = torch.exp(x.logprobs - x.old_logprobs)
    advantages = x.advantages[:, None]
    unclipped = ratio * advantages
    clipped_ratio = torch.clamp(ratio, 1 - x.epsilon_low, 1 + x.epsilon_high)
    clipped = clipped_ratio * advantages
    objective = torch.min(unclipped, clipped)
    kl = None
    if x.beta > 0:
        if x.ref_logprobs is None:
            raise ValueError("beta > 0 needs reference log-probs")
        kl = k3_kl(x.logprobs, x.ref_logprobs)
        objective = objective - x.beta * kl
    return LossOutput(loss=torch.zeros(()), per_token_loss=-objective, clipped=(clipped < unclipped), kl=kl)


@register_policy_loss("token")
def token_level_loss(x: LossInputs) -> LossOutput:
    """Sum of per-token losses over every completion token of the step / number of those tokens (DAPO).

    Long and short completions weigh by their tokens, so long wrong answers are not diluted.
    Two rows with per-token losses [1, 1] and [4, pad] give (1 + 1 + 4) / 3 = 2.
    """
    out = per_token_objective(x)
    denom = x.total_tokens if x.total_tokens is not None else x.mask.sum().clamp(min=1)
    out.loss = (out.per_token_loss * x.mask).sum() / denom
    return out


@register_policy_loss("sequence")
def sequence_level_loss(x: LossInputs) -> LossOutput:
    """Mean over completions of each completion's mean per-token loss (the original GRPO paper).

    Two rows with per-token losses [1, 1] and [4, pad] give (1 + 4) / 2 = 2.5.
    """
    out = per_token_objective(x)
    per_row = (out.per_token_loss * x.mask).sum(-1) / x.mask.sum(-1).clamp(min=1)
    denom = x.total_rows if x.total_rows is not None else per_row.numel()
    out.loss = per_row.sum() / denom
    return out


@register_policy_loss("dr_grpo")
def dr_grpo_loss(x: LossInputs) -> LossOutput:
    """Sum of per-token losses / (completions × max completion tokens), a length-unbiased constant (Dr. GRPO).

    Two rows with per-token losses [1, 1] and [4, pad] and a 2-token budget give (1 + 1 + 4) / (2 × 2) = 1.5.
    """
    out = per_token_objective(x)
    rows = x.total_rows if x.total_rows is not None else x.mask.shape[0]
    width = x.max_tokens if x.max_tokens is not None else x.mask.shape[1]
    out.loss = (out.per_token_loss * x.mask).sum() / (rows * width)
    return out
