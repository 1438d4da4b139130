"""The GRPO training loop.

One step, as stages:

    drawn, kept = collect()                             # rounds of: P prompts (curriculum: by pass rate) ->
                                                        #   G completions each -> rewards -> group advantages;
                                                        #   dynamic sampling drops flat groups, draws again
    stats     = learn(kept):                            # the update stages on the kept groups
        plan     = MicroBatchPlan.build(kept)           #   rows with a gradient, in micro-batches of similar length
        old, ref = reference_logprobs(kept)             #   μ > 1: old log-probs again; β > 0: the reference's
        update(kept, plan, old, ref)                    #   μ optimizer steps over the micro-batches
    log(step); maybe evaluate(); maybe save()
"""

from __future__ import annotations

import copy
import functools
import math
import random
import time
from dataclasses import dataclass

import torch

from thinktune.allocator import keep_freed_memory
from thinktune.config import Recipe
from thinktune.console import progress
from thinktune.data import DataError, Example, PromptBuilder
from thinktune.distributed import SINGLE, Ranks
from thinktune.grpo.advantages import group_advantages
from thinktune.grpo.batching import MicroBatchPlan
from thinktune.grpo.losses import LOSSES, LossInputs, correction_weights, high_entropy_mask
from thinktune.grpo.metrics import StepTimes, pass_rate, sample_rows, step_record
from thinktune.grpo.sampling import Groups, PromptSampler
from thinktune.logprobs import SharedPrompts, completion_logprobs, rollout_logprobs, supports_shared_prompts
from thinktune.models import load_policy, reference_policy
from thinktune.rewards import RewardError, RewardSet
from thinktune.rewards.bounded import StopRequested
from thinktune.rewards.guard import GRADER
from thinktune.rewards.registry import RewardScores
from thinktune.rollout import Rollout, RolloutBackend, SamplingParams, make_backend
from thinktune.runs import GeneratorState, RunDir
from thinktune.scoring import TaskMetrics, recipe_scoring
from thinktune.tokens import decode
from thinktune.tracking import Tracker
from thinktune.training import (
    CheckpointPolicy,
    Interrupted,
    NonFiniteGuard,
    autocast,
    gradient_step,
    make_optimizer,
    make_scheduler,
    stop_requests,
)


@dataclass
class PromptBatch:
    indices: list[int]  # into the training pool
    examples: list[Example]
    ids: list[list[int]]
    texts: list[str]


class GRPOTrainer:
    def __init__(
        self,
        recipe: Recipe,
        backend: RolloutBackend,
        model,
        train_examples: list[Example],
        rewards: RewardSet,
        task: TaskMetrics,
        run: RunDir,
        tracker: Tracker,
        ranks: Ranks = SINGLE,
    ):
        keep_freed_memory()
        self.recipe, self.cfg = recipe, recipe.grpo
        self.backend, self.model, self.tokenizer = backend, model, backend.tokenizer
        self.rewards, self.task, self.run, self.tracker, self.ranks = rewards, task, run, tracker, ranks
        if self.cfg.beta > 0:
            reference_policy(model)  # fails early when there is no reference (full fine-tuning)
        data = recipe.data
        self.prompts = PromptBuilder.from_config(self.tokenizer, data)
        self.pool = self.prompts.fitting(train_examples)
        if len(self.pool) < recipe.grpo.prompts_per_step:
            raise DataError(
                f"only {len(self.pool)} training prompts fit data.max_prompt_tokens={data.max_prompt_tokens} "
                f"({self.prompts.stats.skipped} skipped); grpo.prompts_per_step={recipe.grpo.prompts_per_step}"
            )
        self.params = [p for p in model.parameters() if p.requires_grad]
        t = recipe.train
        self.optimizer = make_optimizer(self.params, t.learning_rate, t)
        self.scheduler = make_scheduler(self.optimizer, t.lr_schedule, t.warmup_steps, t.steps * self.cfg.iterations)
        self.sampling = SamplingParams.of_recipe(self.cfg)
        # On the model's device: sampling draws its random numbers where the logits are (a CPU generator
        # cannot feed a CUDA draw).
        device = next(model.parameters()).device
        self.generator = torch.Generator(device=device).manual_seed(t.seed + ranks.rank)
        self.autocast = functools.partial(autocast, device, t.autocast)
        # The trainer's log-probs are the sampler's only when both run the same weights at the same precision.
        self.exact_logprobs = backend.exact_logprobs and t.autocast == "none"
        self.sampler = PromptSampler(len(self.pool), t.seed, self.cfg.curriculum, self.cfg.curriculum_floor)
        self.last_drawn: Groups | None = None  # the last step's groups, for callers that inspect a step
        self.seconds_scoring = 0.0
        self.loss_fn = LOSSES[self.cfg.loss]
        self.guard = NonFiniteGuard(t.max_nonfinite_steps)

    @classmethod
    def from_recipe(
        cls, recipe: Recipe, train_examples, task_dataset, run: RunDir, tracker: Tracker, ranks: Ranks = SINGLE
    ) -> GRPOTrainer:
        """The trainer as ``thinktune train`` builds it: the recipe's policy, rollout backend, rewards and task
        metrics (``task_dataset``: the reasoning-gym scorer, or None)."""
        model, tokenizer = load_policy(recipe.model)
        rewards, task = recipe_scoring(recipe, task_dataset, tokenizer)
        backend = make_backend(recipe.rollout, model, tokenizer)
        return cls(recipe, backend, model, train_examples, rewards, task, run, tracker, ranks)

    # ----------------------------------------------------------------- stages
    def sample_prompts(self, count: int) -> PromptBatch:
        """``count`` prompts from the sampler (a per-epoch shuffle; its state goes into checkpoints); with
        several processes, this process's share of them."""
        indices = self.ranks.share(self.sampler.draw(count))
        examples = [self.pool[i][0] for i in indices]
        return PromptBatch(
            indices, examples, [self.pool[i][1] for i in indices], [self.prompts.text(e.question) for e in examples]
        )

    def rollout(self, batch: PromptBatch) -> Rollout:
        """G completions of each prompt, with their log-probs, from the rollout backend."""
        return self.backend.generate(batch.ids, self.sampling, self.generator)

    def score(self, batch: PromptBatch, completions: list[str]) -> RewardScores:
        g = self.cfg.group_size
        prompts = [t for t in batch.texts for _ in range(g)]
        columns = [e.columns() for e in batch.examples for _ in range(g)]
        return self.rewards.score(prompts, completions, columns)

    def rollout_round(self, count: int) -> Groups:
        """Draw ``count`` prompts, sample G completions each, score them and take group advantages."""
        batch = self.sample_prompts(count)
        rollout = self.rollout(batch)
        completions = decode(self.tokenizer, rollout.completion_ids, rollout.completion_mask)
        scoring_began = time.perf_counter()
        scores = self.score(batch, completions)
        advantages, flat = group_advantages(scores.total, self.cfg.group_size, self.cfg.scale_rewards, scores.scorable)
        examples = [e for e in batch.examples for _ in range(self.cfg.group_size)]
        correct = self.task.accuracy(completions, examples)
        groups = Groups(
            group_size=self.cfg.group_size,
            indices=batch.indices,
            examples=batch.examples,
            texts=batch.texts,
            rollout=rollout,
            completions=completions,
            scores=scores,
            advantages=advantages,
            flat=flat,
            correct=correct,
        )
        for group, index in enumerate(batch.indices):
            self.sampler.observe(index, pass_rate(groups, group))
        self.seconds_scoring += time.perf_counter() - scoring_began
        return groups

    def collect(self) -> tuple[Groups, Groups, dict[str, float]]:
        """The step's groups: every group drawn, the groups trained on, and how sampling went.

        Without dynamic sampling one round of ``prompts_per_step`` prompts is drawn and all of it is trained
        on (flat groups then have zero advantage and are skipped by the update). With it, flat groups are
        dropped and further rounds draw the shortfall, scaled up by the share of groups kept so far, until
        ``prompts_per_step`` groups have spread or ``max_sampling_rounds`` rounds are spent.
        """
        cfg = self.cfg
        rejected_before = self.sampler.rejected
        drawn, kept = [], []
        kept_count = drawn_count = 0
        for _ in range(cfg.max_sampling_rounds if cfg.dynamic_sampling else 1):
            missing = cfg.prompts_per_step - kept_count
            kept_share = kept_count / drawn_count if drawn_count else 1.0
            groups = self.rollout_round(math.ceil(missing / max(kept_share, 0.25)))
            drawn.append(groups)
            drawn_count += groups.size
            signal = [i for i in range(groups.size) if not groups.flat[i]] if cfg.dynamic_sampling else None
            part = groups.take(signal[:missing]) if signal is not None else groups
            kept.append(part)
            kept_count += part.size
            if kept_count >= cfg.prompts_per_step:
                break
        pad = self.tokenizer.pad_token_id
        info = {
            "sampling_rounds": len(drawn),
            "sampled_prompts": self.ranks.sum(drawn_count),
            "kept_groups": self.ranks.sum(kept_count),
            "kept_fraction": kept_count / drawn_count,
            "sampling_shortfall": max(0, cfg.prompts_per_step - kept_count),
            "curriculum_passed_over": self.sampler.rejected - rejected_before,
            "pool_seen": len(self.sampler.pass_rate) / len(self.pool),
        }
        return Groups.cat(drawn, pad), Groups.cat(kept, pad), info

    def learn(self, rollout: Rollout, advantages: torch.Tensor) -> dict[str, float]:
        """The update stages on one generation: plan the micro-batches, take the old and reference log-probs,
        step the policy μ times, and tell the rollout backend the weights changed."""
        plan = MicroBatchPlan.build(rollout, advantages, self.cfg).across(self.ranks)
        old_logprobs, ref_logprobs = self.reference_logprobs(rollout)
        correction = None
        if not self.exact_logprobs and self.recipe.rollout.correction != "recompute":
            correction = correction_weights(old_logprobs, rollout.logprobs, self.recipe.rollout)
        stats = self.update(rollout, advantages, plan, old_logprobs, ref_logprobs, correction)
        self.backend.weights_changed()
        if not self.exact_logprobs:  # how far the sampler's numbers are from the trainer's
            valid = rollout.completion_mask.bool()
            gap = (old_logprobs - rollout.logprobs)[valid].abs()
            stats["logprob_mismatch"] = gap.mean().item() if gap.numel() else 0.0
            if correction is not None:
                stats["correction_weight"] = correction[valid].mean().item() if valid.any() else 1.0
                stats["correction_masked"] = (correction[valid] == 0).float().mean().item() if valid.any() else 0.0
        return stats

    def reference_logprobs(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Old log-probs (the sampler's, or with μ > 1 recomputed once before the updates) and, with a KL term,
        the reference policy's."""
        cfg = self.cfg
        old = rollout.logprobs
        with self.autocast():
            if cfg.iterations > 1 or not self.exact_logprobs:
                old = rollout_logprobs(self.model, rollout, cfg.micro_batch_size, cfg.temperature)
        ref = None
        if cfg.beta > 0:
            with reference_policy(self.model), self.autocast():
                ref = rollout_logprobs(self.model, rollout, cfg.micro_batch_size, cfg.temperature)
        return old, ref

    def update(
        self, rollout: Rollout, advantages: torch.Tensor, plan: MicroBatchPlan, old_logprobs, ref_logprobs, correction
    ):
        """μ optimizer steps on this generation; gradients accumulate over the plan's micro-batches. ``correction``:
        the rollout correction's per-token weights, or None."""
        cfg = self.cfg
        sums = {"loss": 0.0, "clip": 0.0, "kl": 0.0, "entropy": 0.0, "grad_norm": 0.0, "trained_rows": 0.0}
        if plan.rows == 0:  # dynamic sampling found no group with spread: nothing to learn, the schedule moves on
            for _ in range(cfg.iterations):  # no gradients: the weights stay as they are
                gradient_step(self.optimizer, self.scheduler, self.params, self.recipe.train.max_grad_norm)
            return sums
        tokens = plan.totals["total_tokens"]
        sums["trained_rows"] = self.ranks.sum(plan.trained_rows) / plan.totals["total_rows"]
        shared = supports_shared_prompts(self.model) and plan.trained_rows > 0
        self.model.train()
        for iteration in range(cfg.iterations):
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                prompts = SharedPrompts.encode(self.model, plan.prompt_ids, plan.prompt_mask) if shared else None
            for rows in plan.batches:
                width = max(1, int(rollout.completion_mask[rows].sum(-1).max()))  # trim padding columns
                completion = rollout.completion_ids[rows, :width], rollout.completion_mask[rows, :width]
                entropy_wanted = iteration == 0 or cfg.top_entropy_quantile < 1
                with self.autocast():
                    if prompts is not None:
                        logprobs, entropy = prompts.completion_logprobs(
                            self.model, plan.slot[rows], *completion, cfg.temperature, with_entropy=entropy_wanted
                        )
                    else:
                        logprobs, entropy = completion_logprobs(
                            self.model,
                            rollout.prompt_ids[rows],
                            rollout.prompt_mask[rows],
                            *completion,
                            cfg.temperature,
                            with_entropy=entropy_wanted,
                        )
                m = plan.mask[rows, :width]
                weights = None if correction is None else correction[rows, :width]
                if cfg.top_entropy_quantile < 1:  # only the most uncertain tokens of the micro-batch train
                    chosen = high_entropy_mask(entropy.detach(), m, cfg.top_entropy_quantile)
                    weights = chosen if weights is None else weights * chosen
                out = self.loss_fn(
                    LossInputs(
                        logprobs=logprobs,
                        old_logprobs=old_logprobs[rows, :width],
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
                out.loss.backward()
                sums["loss"] += out.loss.item() / cfg.iterations
                sums["clip"] += (out.clipped.float() * m).sum().item() / tokens / cfg.iterations
                if out.kl is not None:
                    sums["kl"] += (out.kl.detach() * m).sum().item() / tokens / cfg.iterations
                if iteration == 0:
                    sums["entropy"] += (entropy * m).sum().item() / plan.trained_tokens
            if prompts is not None:
                prompts.backward()
            self.ranks.sum_gradients(self.params)
            loss = self.ranks.sum(sums["loss"])  # NaN in any process reaches every process
            max_norm = self.recipe.train.max_grad_norm
            grad_norm = gradient_step(self.optimizer, self.scheduler, self.params, max_norm, loss)
            sums["grad_norm"] += grad_norm / cfg.iterations
        for key in ("loss", "clip", "kl", "entropy"):  # each process's share of the step's normalised sums
            sums[key] = self.ranks.sum(sums[key])
        return sums

    # ----------------------------------------------------------------- the loop
    def step(self, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        incidents_before = GRADER.counts()
        user_calls, user_timeouts = self.rewards.calls, self.rewards.timeouts
        self.seconds_scoring = 0.0
        drawn, kept, sampling = self.collect()
        t1 = time.perf_counter()
        calls, timeouts, errors = (now - before for now, before in zip(GRADER.counts(), incidents_before, strict=True))
        if calls and timeouts + errors == calls:
            raise RewardError(
                f"step {step + 1}: every one of the {calls} grader calls timed out or failed ({timeouts} time-outs, "
                f"{errors} errors; last error: {GRADER.last_error}): the rewards would all be 0"
            )
        user_calls, user_timeouts = self.rewards.calls - user_calls, self.rewards.timeouts - user_timeouts
        if user_calls and user_timeouts == user_calls:
            raise RewardError(
                f"step {step + 1}: every one of the {user_calls} calls of the reward functions timed out "
                f"({self.rewards.last_timeout}); raise rewards[].timeout, or make the function faster"
            )
        stats = self.learn(kept.rollout, kept.advantages)
        if self.ranks.world > 1:  # the step's record covers every process's groups
            drawn = Groups.cat(self.ranks.gather(drawn), self.tokenizer.pad_token_id)
        stats["nonfinite_skipped"] = float(not self.guard.check(step + 1, stats["loss"], stats["grad_norm"]))
        t2 = time.perf_counter()

        times = StepTimes(rollout=t1 - t0 - self.seconds_scoring, score=self.seconds_scoring, update=t2 - t1)
        record = step_record(
            drawn,
            self.task.format_ok(drawn.completions),
            stats,
            sampling,
            self.scheduler.get_last_lr()[0],
            times,
            (timeouts, errors, user_timeouts),
        )
        self.tracker.log(step + 1, record)
        self.tracker.log_samples(step + 1, sample_rows(drawn, self.recipe.run.samples_per_step))
        self.last_drawn = drawn
        return {"step": step + 1, **record}

    def stoppable_step(self, step: int, stop) -> dict:
        """:meth:`step`, except that a stop requested while a reward function or a grader runs drops the step at
        once: the weights are as the last finished step left them (rewards come before the update), so the sampling
        state is put back as it was, checkpointed as that step's, and the run stops."""
        began = self.sampling_state()
        self.rewards.stop = GRADER.stop = stop
        try:
            return self.step(step)
        except StopRequested:
            self.restore_sampling_state(began)
            parts = self.checkpoint_parts()
            if self.ranks.main:
                self.run.save_checkpoint(step, self.recipe, self.model, parts)
            raise Interrupted(step) from None
        finally:
            self.rewards.stop = GRADER.stop = None

    def sampling_state(self) -> dict:
        """What a step's sampling moves on: the prompt sampler, the sampling generator and the global RNGs."""
        return {"sampler": copy.deepcopy(self.sampler.state_dict()), "generator": self.generator.get_state(),
                "python": random.getstate(), "torch": torch.get_rng_state()}  # fmt: skip

    def restore_sampling_state(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.generator.set_state(state["generator"])
        random.setstate(state["python"])
        torch.set_rng_state(state["torch"])

    def checkpoint_parts(self) -> dict:
        """What a checkpoint restores besides the weights: optimizer, schedule, sampling RNG, prompt order."""
        return {"optimizer": self.optimizer, "scheduler": self.scheduler, "sampling_generator":
                GeneratorState(self.generator, self.ranks), "prompt_sampler": self.sampler}  # fmt: skip

    def train(self, start_step: int = 0, on_eval=None) -> list[dict]:
        """Run the remaining steps; ``on_eval(step)`` is called every ``eval.every`` steps, and stops training
        there (after a checkpoint) by returning True."""
        t = self.recipe.train
        records = []
        policy = CheckpointPolicy(self.recipe.run, t.steps, at_end=True)  # the last: --resume goes to evaluation
        with progress("train", total=t.steps) as bar, stop_requests() as stop:
            bar.advance(start_step)
            for step in range(start_step, t.steps):
                record = self.stoppable_step(step, stop)
                records.append(record)
                bar.advance()
                bar.show(
                    f"reward {record['reward']:.3f}  acc {record['accuracy']:.2f}  "
                    f"fmt {record['format']:.2f}  len {record['completion_length']:.0f}"
                )
                done = step + 1
                halt = False  # on_eval says True to stop here (the regression alarm with eval.stop_on_regression)
                if self.recipe.eval.every and done % self.recipe.eval.every == 0 and done < t.steps and on_eval:
                    halt = self.ranks.any(bool(on_eval(done)))
                stopping = self.ranks.any(stop.requested)
                if policy.due(done, stopping=stopping or halt):
                    parts = self.checkpoint_parts()  # every process takes part: generator states are gathered
                    if self.ranks.main:
                        self.run.save_checkpoint(done, self.recipe, self.model, parts)
                    policy.saved()
                if stopping:
                    raise Interrupted(done)
                if halt:
                    break
        return records
