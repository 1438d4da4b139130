"""The update half of a GRPO step: μ optimizer steps of the policy on one generation's groups.

plan     = MicroBatchPlan.build(rollout, advantages)   # rows with a gradient, in micro-batches of similar length
old, ref = old_and_reference(rollout, plan)            # β > 0: the reference's log-probs (of the plan's rows,
                                                       #   each prompt run once)
for each of μ iterations:                              # gradients accumulate over the micro-batches
    loss(new log-probs, old, ref, advantages).backward(); clip; optimizer step

The first iteration's forward runs the policy that sampled, before any optimizer step. So where the old log-probs
must be the trainer's (μ > 1, or a sampler whose numbers differ: bfloat16, vLLM, autocast, a 4-bit base) they are
that forward's, detached, kept for the later iterations: the loss and gradients a separate recompute pass would
give, without the pass.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch

from thinktune.distributed import Ranks
from thinktune.grpo.batching import MicroBatchPlan
from thinktune.grpo.losses import LOSSES, LossInputs, correction_weights, high_entropy_mask
from thinktune.logprobs import SharedPrompts, completion_logprobs, supports_shared_prompts
from thinktune.models import reference_policy
from thinktune.parallel import Parallel
from thinktune.rollout import Rollout
from thinktune.savers import checkpointed_layers
from thinktune.training import autocast, gradient_step


@dataclass
class UpdateStats:
    """What one update reports, under the names the step's record uses.

    ``loss``, ``clip_fraction``, ``kl`` and ``entropy`` are each process's share of the step's normalised sums
    until :meth:`reduce` adds them up; ``grad_norm`` is already the global norm. The last three are measured only
    when the sampler's log-probs are not the trainer's (None: left out of the record).

    >>> stats = UpdateStats()
    >>> stats.add(loss=0.5, kl=0.1)
    >>> stats.add(loss=0.25)
    >>> stats.loss, stats.kl, stats.record()["clip_fraction"]
    (0.75, 0.1, 0.0)
    """

    kl: float = 0.0
    entropy: float = 0.0
    clip_fraction: float = 0.0
    loss: float = 0.0
    grad_norm: float = 0.0
    nonfinite_skipped: float = 0.0  # 1: the update was skipped (NaN/inf loss or gradient)
    trained_rows: float = 0.0  # share of the step's rows that had a gradient
    # mean |log-prob| gap between the rollout engine and the trainer, and with rollout.correction the mean weight
    # it gave and the share of tokens it dropped
    logprob_mismatch: float | None = None
    correction_weight: float | None = None
    correction_masked: float | None = None

    def add(self, **parts: float) -> None:
        for name, value in parts.items():
            setattr(self, name, getattr(self, name) + value)

    def reduce(self, ranks: Ranks) -> None:
        """Add up every process's share of the normalised sums."""
        for name in ("loss", "clip_fraction", "kl", "entropy"):
            setattr(self, name, ranks.sum(getattr(self, name)))

    def record(self) -> dict[str, float]:
        return {name: value for name, value in asdict(self).items() if value is not None}


class PolicyUpdate:
    """The policy's optimizer steps on a rollout, by the recipe's loss, with its rollout correction."""

    def __init__(self, recipe, model, params, optimizer, scheduler, exact_logprobs: bool, engine: Parallel):
        self.cfg, self.train_cfg, self.rollout_cfg = recipe.grpo, recipe.train, recipe.rollout
        self.model, self.params, self.optimizer, self.scheduler = model, params, optimizer, scheduler
        self.exact_logprobs, self.engine, self.ranks = exact_logprobs, engine, engine.ranks
        self.autocast = functools.partial(autocast, model, recipe.train.autocast)
        self.loss_fn = LOSSES[self.cfg.loss]
        # the old log-probs are taken from the first iteration's forward (see the module's docstring)
        self.old_from_update = self.cfg.iterations > 1 or not exact_logprobs
        self.corrects = not exact_logprobs and self.rollout_cfg.correction != "recompute"

    def learn(self, rollout: Rollout, advantages: torch.Tensor) -> UpdateStats:
        """Plan the micro-batches, take the old and reference log-probs, and step the policy μ times."""
        plan = MicroBatchPlan.build(rollout, advantages, self.cfg).across(self.ranks)
        advantages = advantages.to(rollout.completion_mask.device)  # rewards are scored on the CPU
        old_logprobs, ref_logprobs = self.old_and_reference(rollout, plan)
        stats = self.update(rollout, advantages, plan, old_logprobs, ref_logprobs)
        if not self.exact_logprobs:  # how far the sampler's numbers are from the trainer's, on the rows trained
            trained = torch.zeros(plan.rows, dtype=torch.bool)
            trained[torch.cat(plan.batches) if plan.batches else []] = True
            valid = rollout.completion_mask.bool() & trained.to(rollout.completion_mask.device)[:, None]
            gap = (old_logprobs - rollout.logprobs)[valid].abs()
            stats.logprob_mismatch = gap.mean().item() if gap.numel() else 0.0
            if self.corrects:
                correction = correction_weights(old_logprobs, rollout.logprobs, self.rollout_cfg)
                stats.correction_weight = correction[valid].mean().item() if valid.any() else 1.0
                stats.correction_masked = (correction[valid] == 0).float().mean().item() if valid.any() else 0.0
        return stats

    def old_and_reference(self, rollout: Rollout, plan: MicroBatchPlan) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Old log-probs and, with a KL term, the reference policy's. The old ones are the sampler's where they are
        the trainer's own and μ = 1; otherwise a copy of the sampler's that the first iteration overwrites with its
        forward's, row by row. The reference's are computed for the plan's rows only: no other row enters the loss
        (the others keep the sampler's numbers, or 0 for the reference)."""
        old = rollout.logprobs
        if old.shape[0] == 0:  # several processes: this one kept no group this step (dynamic sampling)
            return old, None
        if self.old_from_update:
            old = old.clone()
        ref = None
        if self.cfg.beta > 0:
            with reference_policy(self.model), self.autocast():
                ref = self.planned_logprobs(rollout, plan, torch.zeros_like(rollout.logprobs))
        return old, ref

    @torch.no_grad()
    def planned_logprobs(self, rollout: Rollout, plan: MicroBatchPlan, others: torch.Tensor) -> torch.Tensor:
        """The log-probs of the plan's rows under the model as it is now (the reference policy's, with a KL term), in
        its micro-batches, each distinct prompt run once as in the update (over every row with its prompt, a demo
        step's old log-probs took about 7 s, about 1 s this way: README, "The recompute it cost"); ``others``'
        values in the rows it does not train; 0 past each completion's end."""
        out = others.clone()
        shared = supports_shared_prompts(self.model) and len(plan.batches) > 0
        prompts = SharedPrompts.encode(self.model, plan.prompt_ids, plan.prompt_mask) if shared else None
        for rows in plan.batches:
            logprobs, _, mask = self.rows_logprobs(rollout, plan, rows, prompts, with_entropy=False)
            out[rows] = 0.0
            out[rows, : mask.shape[1]] = logprobs * mask
        return out

    def rows_logprobs(self, rollout: Rollout, plan: MicroBatchPlan, rows, prompts: SharedPrompts | None, with_entropy):
        """Log-probs (and entropies if asked) of ``rows``' completions under the model, trimmed to their longest
        completion, through the shared prompt states when there are some; and the completion mask, trimmed."""
        width = max(1, int(rollout.completion_mask[rows].sum(-1).max()))  # trim padding columns
        completion = rollout.completion_ids[rows, :width], rollout.completion_mask[rows, :width]
        if prompts is not None:
            logprobs, entropy = prompts.completion_logprobs(
                self.model, plan.slot[rows], *completion, rollout.temperature, with_entropy=with_entropy
            )
        else:
            ids, mask = rollout.prompt_ids[rows], rollout.prompt_mask[rows]
            logprobs, entropy = completion_logprobs(
                self.model, ids, mask, *completion, rollout.temperature, with_entropy=with_entropy
            )
        return logprobs, entropy, completion[1]

    def update(self, rollout, advantages, plan: MicroBatchPlan, old_logprobs, ref_logprobs) -> UpdateStats:
        """μ optimizer steps on this generation; gradients accumulate over the plan's micro-batches."""
        cfg, stats = self.cfg, UpdateStats()
        max_norm = self.train_cfg.max_grad_norm
        if self.ranks.sum(plan.rows) == 0:  # dynamic sampling found no group with spread: nothing to learn, the
            for _ in range(cfg.iterations):  # schedule moves on; no gradients: the weights stay as they are
                gradient_step(self.optimizer, self.scheduler, self.params, max_norm)
            return stats
        trained_rows = self.ranks.sum(plan.trained_rows)
        stats.trained_rows = trained_rows / plan.totals["total_rows"]
        # Several processes: the last micro-batch is the synchronised pass that reduces every gradient (see
        # parallel.py), with its own prompts; a process with nothing to train still takes part, with a zero loss.
        local, synced = plan.batches, []
        if self.ranks.world > 1 and trained_rows:
            local, synced = plan.batches[:-1], plan.batches[-1:]
        shared = supports_shared_prompts(self.model) and len(local) > 0
        self.model.train()
        for iteration in range(cfg.iterations):
            self.optimizer.zero_grad(set_to_none=True)
            self.engine.gather()  # fsdp: whole weights for this iteration's passes
            with self.engine.accumulating():
                with self.autocast():
                    prompts = SharedPrompts.encode(self.model, plan.prompt_ids, plan.prompt_mask) if shared else None
                # the prompt pass writes a cache, so it runs outside checkpointed layers
                with checkpointed_layers(self.model, self.train_cfg.gradient_checkpointing):
                    for rows in local:
                        self.train_on(rollout, advantages, plan, rows, prompts, (old_logprobs, ref_logprobs),
                                      iteration, stats)  # fmt: skip
                if prompts is not None:
                    prompts.backward()
            with checkpointed_layers(self.model, self.train_cfg.gradient_checkpointing):
                for rows in synced:
                    self.train_on(rollout, advantages, plan, rows, None, (old_logprobs, ref_logprobs), iteration,
                                  stats)  # fmt: skip
                if self.ranks.world > 1 and trained_rows and not plan.batches:
                    self.zero_pass()
            loss = self.ranks.sum(stats.loss)  # NaN in any process reaches every process
            grad_norm = gradient_step(self.optimizer, self.scheduler, self.params, max_norm, loss)
            stats.add(grad_norm=grad_norm / cfg.iterations)
        stats.reduce(self.ranks)
        return stats

    def zero_pass(self) -> None:
        """A process with nothing to train takes part in the synchronised pass: one token through the whole model,
        its loss times 0 (every trainable weight gets a zero gradient, as DDP expects)."""
        token = torch.zeros(1, 1, dtype=torch.long, device=next(self.model.parameters()).device)
        with self.autocast():
            logprobs, _ = completion_logprobs(self.model, token, torch.ones_like(token), token, torch.ones_like(token))
        (logprobs.sum() * 0.0).backward()

    def train_on(self, rollout, advantages, plan, rows, prompts, old_and_ref, iteration, stats) -> None:
        """One micro-batch's forward and backward, its shares added to ``stats``."""
        parts = self.micro_batch(rollout, advantages, plan, rows, prompts, old_and_ref, first=iteration == 0,
                                 scale=self.engine.loss_scale)  # fmt: skip
        stats.add(**{name: value / self.cfg.iterations for name, value in parts.items() if name != "entropy"})
        if iteration == 0:
            stats.add(entropy=parts["entropy"])

    def micro_batch(self, rollout, advantages, plan, rows, prompts, old_and_ref, first, scale=1):
        """Forward and backward of one micro-batch (its loss times ``scale``, :attr:`Parallel.loss_scale`) in the
        ``first`` iteration or a later one; its shares of the step's loss, clip fraction, KL and entropy (measured in
        the first). With :attr:`old_from_update`, the first iteration's log-probs (detached) become these rows' old
        log-probs, written into ``old_and_ref[0]``."""
        cfg = self.cfg
        with_entropy = first or cfg.top_entropy_quantile < 1
        with self.autocast():
            logprobs, entropy, completion_mask = self.rows_logprobs(rollout, plan, rows, prompts, with_entropy)
        width = completion_mask.shape[1]
        m = plan.mask[rows, :width]
        all_old, ref_logprobs = old_and_ref
        if self.old_from_update and first:
            all_old[rows] = 0.0  # as a recompute leaves them: 0 past each completion's end
            all_old[rows, :width] = logprobs.detach() * completion_mask
        old_logprobs = all_old[rows, :width]
        weights = None
        if self.corrects:
            weights = correction_weights(old_logprobs, rollout.logprobs[rows, :width], self.rollout_cfg)
        if cfg.top_entropy_quantile < 1:  # only the most uncertain tokens of the micro-batch train
            chosen = high_entropy_mask(entropy.detach(), m, cfg.top_entropy_quantile)
            weights = chosen if weights is None else weights * chosen
        out = self.loss_fn(
            LossInputs(
                logprobs=logprobs,
                old_logprobs=old_logprobs,
                advantages=advantages[rows],
                mask=m,
                ref_logprobs=None if ref_logprobs is None else ref_logprobs[rows, :width],
                beta=cfg.beta,
                epsilon_low=cfg.epsilon,
                epsilon_high=cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high,
                importance_sampling=cfg.importance_sampling,
                weights=weights,
                **plan.totals,
            )
        )
        (out.loss if scale == 1 else out.loss * scale).backward()
        tokens = plan.totals["total_tokens"]
        return {
            "loss": out.loss.item(),
            "clip_fraction": (out.clipped.float() * m).sum().item() / tokens,
            "kl": 0.0 if out.kl is None else (out.kl.detach() * m).sum().item() / tokens,
            "entropy": (entropy * m).sum().item() / plan.trained_tokens if entropy is not None else 0.0,
        }
