"""The GRPO training loop.

One step, as the algorithm reads:

    drawn, kept, sampling = collect()      # rounds of: P prompts (curriculum: by pass rate) -> G completions each
                                           #   -> rewards -> group advantages; dynamic sampling drops flat groups and
                                           #   draws again
    stats = learn(kept.rollout, kept.advantages)   # grpo/update.py: μ optimizer steps on the kept groups
    log(step_record(drawn, stats, ...)); then train() may evaluate and checkpoint
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from dataclasses import replace

import torch

from thinktune.allocator import keep_freed_memory
from thinktune.config import Recipe
from thinktune.console import progress
from thinktune.data import DataError, Example, PromptBuilder
from thinktune.distributed import SINGLE, Ranks
from thinktune.grpo.advantages import shared_advantages
from thinktune.grpo.groups import Groups, pass_rate
from thinktune.grpo.metrics import PhaseTimes, sample_rows, step_record
from thinktune.grpo.sampling import PromptSampler
from thinktune.grpo.update import PolicyUpdate, UpdateStats
from thinktune.models import load_policy, reference_policy
from thinktune.parallel import Shards, parallel_engine
from thinktune.rewards import RewardError, RewardSet
from thinktune.rewards.bounded import StopRequested
from thinktune.rewards.guard import GRADER
from thinktune.rewards.scoring import TaskMetrics, recipe_scoring
from thinktune.rollout import RolloutBackend, SamplingParams, make_backend
from thinktune.run_dir import GeneratorState, RunDir
from thinktune.tokens import decode
from thinktune.tracking import Tracker
from thinktune.training import (
    CheckpointPolicy,
    Interrupted,
    NonFiniteGuard,
    autocast_mode,
    make_optimizer,
    make_scheduler,
    stop_requests,
)


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
        self.engine = parallel_engine(recipe, model, ranks)  # with several processes: DDP or FSDP around the model
        self.params = [p for p in model.parameters() if p.requires_grad]
        t = recipe.train
        self.optimizer = make_optimizer(self.params, t.learning_rate, t)
        self.scheduler = make_scheduler(self.optimizer, t.lr_schedule, t.warmup_steps, t.steps * self.cfg.iterations)
        # The trainer's log-probs are the sampler's only when both run the same weights at the same precision: a 4-bit
        # base's kernels differ between a KV-cached decode step and a whole forward, and in bfloat16 the sampler's
        # merged LoRA weights round differently from the adapters' separate path.
        exact_logprobs = (
            backend.exact_logprobs
            and autocast_mode(t.autocast, next(model.parameters()).device) == "none"
            and recipe.model.quantize == "none"
            and recipe.model.dtype == "float32"
        )
        self.policy_update = PolicyUpdate(recipe, model, self.params, self.optimizer, self.scheduler,
                                          exact_logprobs, self.engine)  # fmt: skip
        self.sampling = replace(SamplingParams.of_recipe(self.cfg), ignore_eos=self.cfg.ignore_eos)
        # On the backend's device: sampling draws its random numbers where the logits are (a CPU generator
        # cannot feed a CUDA draw; vLLM's seed is drawn on the CPU).
        self.generator = torch.Generator(device=backend.device).manual_seed(t.seed + ranks.rank)
        self.sampler = PromptSampler(len(self.pool), t.seed, self.cfg.curriculum, self.cfg.curriculum_floor)
        self.last_drawn: Groups | None = None  # the last step's groups, for callers that inspect a step
        self.times = PhaseTimes()  # the current step's
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
    def sample_prompts(self, count: int) -> list[int]:
        """``count`` prompts from the sampler (a per-epoch shuffle; its state goes into checkpoints), as indices
        into the pool; with several processes, this process's share of them."""
        return self.ranks.share(self.sampler.draw(count))

    def rollout_round(self, count: int) -> Groups:
        """Draw ``count`` prompts, sample G completions each, score them and take group advantages."""
        g = self.cfg.group_size
        with self.times.timed("rollout"):
            indices = self.sample_prompts(count)
            examples = [self.pool[i][0] for i in indices]
            texts = [self.prompts.text(e.question) for e in examples]
            self.engine.gather()  # fsdp: the sampler reads whole weights
            rollout = self.backend.generate([self.pool[i][1] for i in indices], self.sampling, self.generator)
            completions = decode(self.tokenizer, rollout.completion_ids, rollout.completion_mask)
        with self.times.timed("score"):
            rows = [e for e in examples for _ in range(g)]
            scores = self.rewards.score([t for t in texts for _ in range(g)], completions, [e.columns() for e in rows])
            advantages, flat = shared_advantages(scores.total, g, self.cfg.scale_rewards, scores.scorable, self.ranks)
            correct = self.task.accuracy(completions, rows)
            groups = Groups(g, indices, examples, texts, rollout, completions, scores, advantages, flat, correct)
            observed = [(index, pass_rate(groups, group)) for group, index in enumerate(indices)]
            for index, rate in itertools.chain(*self.ranks.gather(observed)):  # every process's groups, in order:
                self.sampler.observe(index, rate)  # the samplers stay identical, so every process draws the same
        return groups

    def collect(self) -> tuple[Groups, Groups, dict[str, float]]:
        """The step's groups: every group drawn, the groups trained on, and how sampling went.

        Without dynamic sampling one round of ``prompts_per_step`` prompts is drawn and all of it is trained
        on (flat groups then have zero advantage and are skipped by the update). With it, flat groups are
        dropped and further rounds draw the shortfall, scaled up by the share of groups kept so far, until
        ``prompts_per_step`` groups have spread or ``max_sampling_rounds`` rounds are spent.

        With several processes each fills its share of ``prompts_per_step``; a round draws what the neediest process
        asks for, times the process count, so every process draws the same prompts and takes its share, and the
        rounds end when every process is full.
        """
        cfg, ranks = self.cfg, self.ranks
        rejected_before = self.sampler.rejected
        drawn, kept = [], []
        kept_count = drawn_count = 0
        target = cfg.prompts_per_step // ranks.world  # this process's groups
        for _ in range(cfg.max_sampling_rounds if cfg.dynamic_sampling else 1):
            missing = target - kept_count
            kept_share = kept_count / drawn_count if drawn_count else 1.0
            wanted = math.ceil(missing / max(kept_share, 0.25))
            groups = self.rollout_round(ranks.world * int(ranks.max(wanted)))
            drawn.append(groups)
            drawn_count += groups.size
            signal = [i for i in range(groups.size) if not groups.flat[i]] if cfg.dynamic_sampling else None
            part = groups.take(signal[:missing]) if signal is not None else groups
            kept.append(part)
            kept_count += part.size
            if not ranks.any(kept_count < target):
                break
        pad = self.tokenizer.pad_token_id
        info = {
            "sampling_rounds": len(drawn),
            "sampled_prompts": ranks.sum(drawn_count),
            "kept_groups": ranks.sum(kept_count),
            "kept_fraction": ranks.sum(kept_count) / ranks.sum(drawn_count),
            "sampling_shortfall": max(0, cfg.prompts_per_step - ranks.sum(kept_count)),
            "curriculum_passed_over": self.sampler.rejected - rejected_before,
            "pool_seen": len(self.sampler.pass_rate) / len(self.pool),
        }
        return Groups.cat(drawn, pad), Groups.cat(kept, pad), info

    def learn(self, rollout, advantages: torch.Tensor) -> UpdateStats:
        """The update on one generation (:class:`PolicyUpdate`); then the rollout backend is told the weights
        changed."""
        stats = self.policy_update.learn(rollout, advantages)
        self.backend.weights_changed()
        return stats

    # ----------------------------------------------------------------- the loop
    def step(self, step: int) -> dict[str, float]:
        """One GRPO step: sample and score groups, update the policy on them, log the step's record."""
        self.times = PhaseTimes()
        drawn, kept, sampling = self.collect()
        with self.times.timed("update"):
            stats = self.learn(kept.rollout, kept.advantages)
            stats.nonfinite_skipped = float(not self.guard.check(step + 1, stats.loss, stats.grad_norm))
        if self.ranks.world > 1:  # the step's record covers every process's groups
            drawn = Groups.cat(self.ranks.gather(drawn), self.tokenizer.pad_token_id)
        lr = self.scheduler.get_last_lr()[0]
        record = step_record(drawn, self.task.format_ok(drawn.completions), stats, sampling, lr, self.times)
        if self.engine.sharded:
            record["seconds_weight_gather"] = self.ranks.max(self.engine.take_gather_seconds())
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
        except RewardError as err:
            raise RewardError(f"step {step + 1}: {err}") from err
        except StopRequested:
            self.restore_sampling_state(began)
            self.save_checkpoint(step)
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
        parts = {"optimizer": self.optimizer, "scheduler": self.scheduler, "sampling_generator":
                 GeneratorState(self.generator, self.ranks), "prompt_sampler": self.sampler}  # fmt: skip
        if self.engine.sharded:  # the weights and the optimizer's state: each process's shards
            del parts["optimizer"]
            parts["shards"] = Shards(self.engine, self.run.checkpoint_folder(), self.optimizer)
        return parts

    def save_checkpoint(self, step: int) -> None:
        """The checkpoint after ``step``; every process takes part (generator states are gathered; under fsdp each
        writes its shards), process 0 writes the rest."""
        parts = self.checkpoint_parts()
        if "shards" in parts:
            parts["shards"].save(step)
        if self.ranks.main:
            self.run.save_checkpoint(step, self.recipe, self.model, parts)

    def train(self, start_step: int = 0, evaluations=None) -> list[dict]:
        """Run the remaining steps. Every ``eval.every`` steps ``evaluations.during_training(step)`` is called, and
        ``evaluations.arrived()`` (the worker's results) after the other steps; True from either stops training
        there, after a checkpoint."""
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
                halt = False  # True stops here: the regression alarm with eval.stop_on_regression
                if evaluations:
                    every = self.recipe.eval.every
                    if every and done % every == 0 and done < t.steps:
                        self.engine.gather()  # process 0 evaluates (and may save best/) from whole weights
                        halt = evaluations.during_training(done)
                    else:
                        halt = evaluations.arrived()
                    halt = self.ranks.any(bool(halt))
                stopping = self.ranks.any(stop.requested)
                if policy.due(done, stopping=stopping or halt):
                    self.save_checkpoint(done)
                    policy.saved()
                if stopping:
                    raise Interrupted(done)
                if halt:
                    break
        return records
