"""Policy losses, in a registry so a recipe picks one by name (``grpo.loss``).

Every loss receives per-token tensors of shape ``[batch, completion_tokens]`` and returns a scalar plus
statistics. The per-token objective is PPO's clipped surrogate with GRPO's group advantages,

    ratio  = exp(logp - old_logp)                                   (token importance sampling)
           = exp(mean over the row's tokens of (logp - old_logp))   (sequence: GSPO, one ratio per completion)
    obj    = min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) * w
    kl_k3  = exp(ref_logp - logp) - (ref_logp - logp) - 1          (only when beta > 0)
    per_token_loss = -obj + beta * kl_k3

where ``w`` weighs tokens (1, or the rollout correction's weight, or 0 for tokens below the entropy quantile).
``token``, ``sequence`` and ``dr_grpo`` differ only in how they average per-token values (the normaliser);
``cispo`` replaces the surrogate by a policy gradient with a clipped, stop-gradient importance weight.

How they match TRL's ``GRPOConfig.loss_type`` (tests/test_trl_parity.py calls TRL's own code on the same inputs):
``token`` = ``dapo``, ``sequence`` = ``grpo``, ``dr_grpo`` = ``dr_grpo``, ``cispo`` = ``cispo`` with TRL's
``epsilon_high`` = 1 + ours; ``grpo.importance_sampling: sequence`` = ``importance_sampling_level="sequence"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from thinktune.registry import Registry


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
    # Normaliser of token-summed losses: tokens in the whole step (token loss) or its rows x the generation
    # budget (dr_grpo), so that micro-batches add up to the full-batch loss. None = this micro-batch's own.
    total_tokens: float | None = None
    total_rows: float | None = None
    max_tokens: int | None = None
    importance_sampling: str = "token"  # "sequence": one length-normalised ratio per completion (GSPO)
    weights: torch.Tensor | None = None  # [B, T] per-token weight of the policy term (no gradient), None = 1


@dataclass
class LossOutput:
    loss: torch.Tensor
    per_token_loss: torch.Tensor
    clipped: torch.Tensor  # [B, T] bool: the clip bound was active
    kl: torch.Tensor | None


LOSSES = Registry("grpo.loss")  # name -> Callable[[LossInputs], LossOutput]
register_policy_loss = LOSSES.register


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(policy || reference), per token; >= 0 and unbiased.

    >>> k3_kl(torch.tensor([0.0]), torch.tensor([0.0])), k3_kl(torch.tensor([-1.0]), torch.tensor([0.0]))
    (tensor([0.]), tensor([0.7183]))
    """
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1


def importance_ratio(x: LossInputs) -> torch.Tensor:
    """``[B, T]`` ratios of the current to the old policy: per token, or with ``importance_sampling="sequence"``
    (GSPO) the exponential of the row's mean log-ratio over its masked tokens, the same on each of its tokens.

    Row log-ratios [0.2, 0.4] (two tokens) give one ratio e^0.3 ≈ 1.35 for both:

    >>> x = LossInputs(torch.tensor([[0.2, 0.4]]), torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2),
    ...                importance_sampling="sequence")
    >>> importance_ratio(x)
    tensor([[1.3499, 1.3499]])
    """
    log_ratio = x.logprobs - x.old_logprobs
    if x.importance_sampling == "sequence":
        mask = x.mask.to(log_ratio.dtype)
        per_row = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
        log_ratio = per_row.expand_as(log_ratio)
    return torch.exp(log_ratio)


def with_kl(x: LossInputs, policy_loss: torch.Tensor, clipped: torch.Tensor) -> LossOutput:
    """The per-token policy term weighted by ``x.weights``, plus the β-weighted k3 KL to the reference."""
    if x.weights is not None:
        policy_loss = policy_loss * x.weights
    kl = None
    if x.beta > 0:
        if x.ref_logprobs is None:
            raise ValueError("beta > 0 needs reference log-probs")
        kl = k3_kl(x.logprobs, x.ref_logprobs)
        policy_loss = policy_loss + x.beta * kl
    return LossOutput(loss=torch.zeros(()), per_token_loss=policy_loss, clipped=clipped, kl=kl)


def per_token_objective(x: LossInputs) -> LossOutput:
    """The clipped surrogate (and KL) per token, before any averaging.

    Worked example: A = 1, ratio = e^0.5 ≈ 1.65 with eps = 0.2 → the clipped term 1.2 wins, loss -1.2:

    >>> x = LossInputs(torch.tensor([[0.5]]), torch.tensor([[0.0]]), torch.tensor([1.0]), torch.tensor([[1]]))
    >>> out = per_token_objective(x); out.per_token_loss, out.clipped
    (tensor([[-1.2000]]), tensor([[True]]))
    """
    ratio = importance_ratio(x)
    advantages = x.advantages[:, None]
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - x.epsilon_low, 1 + x.epsilon_high) * advantages
    return with_kl(x, -torch.min(unclipped, clipped), clipped < unclipped)


def token_mean(out: LossOutput, x: LossInputs) -> torch.Tensor:
    """Sum of the per-token losses / the step's completion tokens (this micro-batch's own when not given)."""
    denom = x.total_tokens if x.total_tokens is not None else x.mask.sum().clamp(min=1)
    return (out.per_token_loss * x.mask).sum() / denom


@register_policy_loss("token")
def token_level_loss(x: LossInputs) -> LossOutput:
    """Sum of per-token losses over every completion token of the step / number of those tokens (DAPO).

    Long and short completions weigh by their tokens, so long wrong answers are not diluted.
    Two rows with per-token losses [1, 1] and [4, pad] give (1 + 1 + 4) / 3 = 2.
    """
    out = per_token_objective(x)
    out.loss = token_mean(out, x)
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
    """Sum of per-token losses / (completions × the generation budget), a constant (Dr. GRPO): the same on every
    step whatever the completions' lengths, so no length bias comes back between steps. The trainer gives
    ``max_tokens = grpo.max_new_tokens``.

    Two rows with per-token losses [1, 1] and [4, pad] and a 2-token budget give (1 + 1 + 4) / (2 × 2) = 1.5.
    """
    out = per_token_objective(x)
    rows = x.total_rows if x.total_rows is not None else x.mask.shape[0]
    width = x.max_tokens if x.max_tokens is not None else x.mask.shape[1]
    out.loss = (out.per_token_loss * x.mask).sum() / (rows * width)
    return out


@register_policy_loss("cispo")
def cispo_loss(x: LossInputs) -> LossOutput:
    """CISPO (MiniMax-M1): a policy gradient on every token, weighted by its importance ratio truncated from above
    at ``1 + epsilon_high`` and cut off from the gradient, averaged over the step's tokens like ``token``:

        per_token_loss = -min(ratio, 1 + eps_high).detach() * A * logp

    Unlike the clipped surrogate, no token's gradient is ever dropped: a ratio past the bound only stops growing.
    TRL's ``cispo`` clamps at ``epsilon_high`` itself (its recommended 5.0 is our 4.0).

    Ratio e^0.5 ≈ 1.65 over a bound of 1.2, A = 1, logp = 0.5: the loss is -1.2 × 0.5 = -0.6, and its gradient
    with respect to logp is -1.2 (where the clipped surrogate's would be 0):

    >>> logp = torch.tensor([[0.5]], requires_grad=True)
    >>> out = cispo_loss(LossInputs(logp, torch.tensor([[0.0]]), torch.tensor([1.0]), torch.tensor([[1]])))
    >>> out.loss.backward(); round(out.loss.item(), 4), round(logp.grad.item(), 4), out.clipped.item()
    (-0.6, -1.2, True)
    """
    ratio = importance_ratio(x)
    weight = torch.clamp(ratio, max=1 + x.epsilon_high).detach()
    out = with_kl(x, -weight * x.advantages[:, None] * x.logprobs, ratio > 1 + x.epsilon_high)
    out.loss = token_mean(out, x)
    return out


def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, quantile: float) -> torch.Tensor:
    """1.0 on the masked tokens whose entropy is at or above the ``1 - quantile`` quantile of the masked tokens'
    entropies, else 0.0: with ``grpo.top_entropy_quantile: 0.2`` only the 20% most uncertain tokens train (the
    "forking tokens" of Wang et al. 2025; TRL's ``top_entropy_quantile``).

    >>> high_entropy_mask(torch.tensor([[0.1, 2.0, 0.5], [3.0, 0.2, 9.0]]), torch.tensor([[1, 1, 1], [1, 1, 0]]), 0.4)
    tensor([[0., 1., 0.],
            [1., 0., 0.]])
    """
    valid = mask.bool()
    if not valid.any():
        return torch.zeros_like(entropy)
    threshold = torch.quantile(entropy[valid].float(), 1 - quantile)
    return ((entropy >= threshold) & valid).to(entropy.dtype)


def correction_weights(trainer_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, rollout) -> torch.Tensor:
    """Per-token weights of the policy term where the sampler's numbers differ from the trainer's (vLLM's kernels,
    bf16 sampling): from ``ratio = exp(trainer - sampler)``, ``rollout.correction`` ``tis`` keeps
    ``min(ratio, clip)`` (truncated importance sampling) and ``icepop`` keeps 1 inside ``[1 / clip, clip]`` and 0
    outside (the token is dropped), with ``clip = rollout.correction_clip``.

    Log-ratios 0, 1.5 and -1.5 (ratios 1, 4.48 and 0.22) with the default clip 3:

    >>> from thinktune.config import RolloutConfig
    >>> trainer, sampler = torch.tensor([[0.0, 1.5, -1.5]]), torch.zeros(1, 3)
    >>> correction_weights(trainer, sampler, RolloutConfig(correction="tis")).round(decimals=3)
    tensor([[1.0000, 3.0000, 0.2230]])
    >>> correction_weights(trainer, sampler, RolloutConfig(correction="icepop"))
    tensor([[1., 0., 0.]])
    """
    ratio = torch.exp(trainer_logprobs - sampler_logprobs).detach()
    clip = rollout.correction_clip
    if rollout.correction == "tis":
        return ratio.clamp(max=clip)
    if rollout.correction == "icepop":
        return ((ratio >= 1 / clip) & (ratio <= clip)).to(ratio.dtype)
    raise ValueError(f"rollout.correction: {rollout.correction!r} gives no weights")
