"""The GRPO training loop.

One step, as stages:

    prompts   = sample_prompts(P)                       # P prompts from the training set (curriculum: by pass rate)
    rollout   = rollout(prompts)                        # G completions each, with token log-probs
    rewards   = score(prompts, rollout)                 # weighted sum of the reward functions
    adv       = group_advantages(rewards, G)            # relative to each prompt's group
      (dynamic sampling: drop groups whose rewards are all equal, draw again until P groups have spread)
    stats     = update(rollout, adv)                    # μ optimizer steps over micro-batches
    log(step); maybe evaluate(); maybe save()
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch

from thinktune.allocator import keep_freed_memory
from thinktune.config import Recipe
from thinktune.data import DataError, Example, PromptBuilder
from thinktune.evaluate import Grader, decode, eos_token_ids
from thinktune.grpo.advantages import group_advantages
from thinktune.grpo.logprobs import SharedPrompts, completion_logprobs, supports_shared_prompts
from thinktune.grpo.losses import LOSSES, LossInputs
from thinktune.grpo.sampling import Groups, PromptSampler
from thinktune.models import reference_policy
from thinktune.rewards import RewardSet
from thinktune.rewards.guard import GRADER
from thinktune.rewards.registry import RewardScores
from thinktune.rollout import Rollout, generate
from thinktune.runs import RunDir
from thinktune.tracking import JsonlWriter, progress


@dataclass
class PromptBatch:
    indices: list[int]  # into the training pool
    examples: list[Example]
    ids: list[list[int]]
    texts: list[str]


def make_scheduler(optimizer, kind: str, warmup: int, total: int):
    """LR multiplier: linear warmup over ``warmup`` steps, then constant, linear or cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress_ = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress_)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class GRPOTrainer:
    def __init__(
        self,
        recipe: Recipe,
        model,
        tokenizer,
        train_examples: list[Example],
        rewards: RewardSet,
        grader: Grader,
        run: RunDir,
    ):
        keep_freed_memory()
        self.recipe, self.cfg = recipe, recipe.grpo
        self.model, self.tokenizer = model, tokenizer
        self.rewards, self.grader, self.run = rewards, grader, run
        if self.cfg.beta > 0:
            reference_policy(model)  # fails early when there is no reference (full fine-tuning)
        data = recipe.data
        self.prompts = PromptBuilder.from_config(tokenizer, data)
        self.pool = [(e, ids) for e in train_examples if (ids := self.prompts.ids(e.question)) is not None]
        if len(self.pool) < recipe.grpo.prompts_per_step:
            raise DataError(
                f"only {len(self.pool)} training prompts fit data.max_prompt_tokens={data.max_prompt_tokens} "
                f"({self.prompts.stats.skipped} skipped); grpo.prompts_per_step={recipe.grpo.prompts_per_step}"
            )
        self.eos_ids = eos_token_ids(tokenizer)
        params = [p for p in model.parameters() if p.requires_grad]
        t = recipe.train
        self.optimizer = torch.optim.AdamW(params, lr=t.learning_rate, betas=t.adam_betas, weight_decay=t.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, t.lr_schedule, t.warmup_steps, t.steps * self.cfg.iterations)
        self.generator = torch.Generator().manual_seed(t.seed)
        self.sampler = PromptSampler(len(self.pool), t.seed, self.cfg.curriculum, self.cfg.curriculum_floor)
        self.last_drawn: Groups | None = None  # the last step's groups, for callers that inspect a step
        self.seconds_scoring = 0.0
        self.loss_fn = LOSSES[self.cfg.loss]
        self.metrics = JsonlWriter(run.file("metrics.jsonl"))
        self.samples = JsonlWriter(run.file("samples.jsonl"))

    # ----------------------------------------------------------------- stages
    def sample_prompts(self, count: int) -> PromptBatch:
        """``count`` prompts from the sampler (a per-epoch shuffle; its state goes into checkpoints)."""
        indices = self.sampler.draw(count)
        examples = [self.pool[i][0] for i in indices]
        return PromptBatch(
            indices, examples, [self.pool[i][1] for i in indices], [self.prompts.text(e.question) for e in examples]
        )

    def rollout(self, batch: PromptBatch) -> Rollout:
        return generate(
            self.model,
            batch.ids,
            eos_ids=self.eos_ids,
            pad_id=self.tokenizer.pad_token_id,
            max_new_tokens=self.cfg.max_new_tokens,
            group_size=self.cfg.group_size,
            temperature=self.cfg.temperature,
            top_k=self.cfg.top_k,
            top_p=self.cfg.top_p,
            generator=self.generator,
        )

    def score(self, batch: PromptBatch, completions: list[str]) -> RewardScores:
        g = self.cfg.group_size
        prompts = [t for t in batch.texts for _ in range(g)]
        columns = [e.columns() for e in batch.examples for _ in range(g)]
        return self.rewards.score(prompts, completions, columns)

    def update(self, rollout: Rollout, advantages: torch.Tensor) -> dict[str, float]:
        """μ optimizer steps on this generation; gradients accumulate over micro-batches.

        Rows whose gradient is identically zero (advantage 0 and no KL term) are left out, and the rest go in
        micro-batches of similar completion length, so little of the compute goes to padding.
        """
        cfg = self.cfg
        mask = rollout.completion_mask.float()
        if cfg.mask_truncated:
            mask = mask * (~rollout.truncated)[:, None].float()
        n = mask.shape[0]
        sums = {"loss": 0.0, "clip": 0.0, "kl": 0.0, "entropy": 0.0, "grad_norm": 0.0, "trained_rows": 0.0}
        if n == 0:  # dynamic sampling found no group with spread: nothing to learn, the schedule moves on
            for _ in range(cfg.iterations):
                self.optimizer.zero_grad(set_to_none=True)
                self.optimizer.step()  # no gradients: changes nothing
                self.scheduler.step()
            return sums
        tokens = mask.sum().clamp(min=1).item()
        totals = {"total_tokens": tokens, "total_rows": n, "max_tokens": mask.shape[1]}
        lengths = rollout.completion_mask.sum(-1)
        batches = micro_batches(lengths, advantages, cfg.micro_batch_size, skip_zero_advantage=cfg.beta == 0)
        everything = list(torch.arange(n).split(cfg.micro_batch_size))
        old_logprobs = rollout.logprobs if cfg.iterations == 1 else self._logprobs_no_grad(rollout, everything)
        ref_logprobs = self._logprobs_no_grad(rollout, everything, reference=True) if cfg.beta > 0 else None
        trained = torch.cat(batches) if batches else torch.zeros(0, dtype=torch.long)
        trained_tokens = mask[trained].sum().clamp(min=1).item()
        # Each prompt with a trained row is encoded once (SharedPrompts); slot[row] is its place in that batch.
        prompt_of_row = torch.arange(n) // cfg.group_size
        needed = prompt_of_row[trained].unique()
        slot = torch.searchsorted(needed, prompt_of_row)
        first_rows = needed * cfg.group_size
        needed_prompts = rollout.prompt_ids[first_rows], rollout.prompt_mask[first_rows]
        shared = supports_shared_prompts(self.model) and trained.numel() > 0

        sums["trained_rows"] = trained.numel() / n
        self.model.train()
        for iteration in range(cfg.iterations):
            self.optimizer.zero_grad(set_to_none=True)
            prompts = SharedPrompts.encode(self.model, *needed_prompts) if shared else None
            for rows in batches:
                width = max(1, int(rollout.completion_mask[rows].sum(-1).max()))  # trim padding columns
                completion = rollout.completion_ids[rows, :width], rollout.completion_mask[rows, :width]
                if prompts is not None:
                    logprobs, entropy = prompts.completion_logprobs(
                        self.model, slot[rows], *completion, cfg.temperature, with_entropy=iteration == 0
                    )
                else:
                    logprobs, entropy = completion_logprobs(
                        self.model,
                        rollout.prompt_ids[rows],
                        rollout.prompt_mask[rows],
                        *completion,
                        cfg.temperature,
                        with_entropy=iteration == 0,
                    )
                m = mask[rows, :width]
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
                        **totals,
                    )
                )
                out.loss.backward()
                sums["loss"] += out.loss.item() / cfg.iterations
                sums["clip"] += (out.clipped.float() * m).sum().item() / tokens / cfg.iterations
                if out.kl is not None:
                    sums["kl"] += (out.kl.detach() * m).sum().item() / tokens / cfg.iterations
                if entropy is not None:
                    sums["entropy"] += (entropy * m).sum().item() / trained_tokens
            if prompts is not None:
                prompts.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], self.recipe.train.max_grad_norm
            )
            sums["grad_norm"] += grad_norm.item() / cfg.iterations
            self.optimizer.step()
            self.scheduler.step()
        return sums

    @torch.no_grad()
    def _logprobs_no_grad(self, rollout: Rollout, batches: list[torch.Tensor], reference: bool = False) -> torch.Tensor:
        out = torch.zeros_like(rollout.logprobs)
        context = reference_policy(self.model) if reference else contextlib.nullcontext()
        with context:
            for s in batches:
                out[s], _ = completion_logprobs(
                    self.model,
                    rollout.prompt_ids[s],
                    rollout.prompt_mask[s],
                    rollout.completion_ids[s],
                    rollout.completion_mask[s],
                    self.cfg.temperature,
                )
        return out * rollout.completion_mask

    def rollout_round(self, count: int) -> Groups:
        """Draw ``count`` prompts, sample G completions each, score them and take group advantages."""
        batch = self.sample_prompts(count)
        rollout = self.rollout(batch)
        completions = decode(self.tokenizer, rollout.completion_ids, rollout.completion_mask)
        scoring_began = time.perf_counter()
        scores = self.score(batch, completions)
        advantages, flat = group_advantages(scores.total, self.cfg.group_size, self.cfg.scale_rewards)
        examples = [e for e in batch.examples for _ in range(self.cfg.group_size)]
        correct = self.grader.accuracy(completions, examples)
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
            self.sampler.observe(index, _pass_rate(groups, group))
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
            "sampled_prompts": drawn_count,
            "kept_groups": kept_count,
            "kept_fraction": kept_count / drawn_count,
            "sampling_shortfall": max(0, cfg.prompts_per_step - kept_count),
            "curriculum_passed_over": self.sampler.rejected - rejected_before,
            "pool_seen": len(self.sampler.pass_rate) / len(self.pool),
        }
        return Groups.cat(drawn, pad), Groups.cat(kept, pad), info

    # ----------------------------------------------------------------- the loop
    def step(self, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        timeouts_before, errors_before = GRADER.counts()
        self.seconds_scoring = 0.0
        drawn, kept, sampling = self.collect()
        t1 = time.perf_counter()
        stats = self.update(kept.rollout, kept.advantages)
        t2 = time.perf_counter()

        lengths = drawn.rollout.completion_lengths.float()
        generated = lengths.sum().item()
        record = {
            "step": step + 1,
            # The policy as sampled: every drawn completion, kept or not.
            "reward": drawn.scores.total.mean().item(),
            "reward_std": drawn.scores.total.std().item(),
            "accuracy": _mean(drawn.correct or [math.nan]),
            "format": _mean(self.grader.format_ok(drawn.completions)),
            **_per_function(drawn.scores),
            "kl": stats["kl"],
            "entropy": stats["entropy"],
            "clip_fraction": stats["clip"],
            "loss": stats["loss"],
            "grad_norm": stats["grad_norm"],
            "trained_rows": stats["trained_rows"],
            "lr": self.scheduler.get_last_lr()[0],
            "completion_length": lengths.mean().item(),
            "completion_length_max": lengths.max().item(),
            "truncation_rate": drawn.rollout.truncated.float().mean().item(),
            "zero_std_groups": drawn.flat.float().mean().item(),  # of every group drawn
            **sampling,
            # completions whose grading hit the time bound or failed (scored 0), this step
            "grader_timeouts": GRADER.timeouts - timeouts_before,
            "grader_errors": GRADER.errors - errors_before,
            "seconds_rollout": t1 - t0 - self.seconds_scoring,  # every round's
            "seconds_score": self.seconds_scoring,
            "seconds_update": t2 - t1,
            "generated_tokens_per_s": generated / max(t1 - t0 - self.seconds_scoring, 1e-9),
            "tokens_per_s": generated / max(t2 - t0, 1e-9),
        }
        self.metrics.write(record)
        self.last_drawn = drawn
        for group in range(min(self.recipe.run.samples_per_step, drawn.size)):
            row = group * self.cfg.group_size  # the first completion of different prompts
            example = drawn.examples[group]
            self.samples.write(
                {
                    "step": step + 1,
                    "question": example.question,
                    "answer": example.answer,
                    "completion": drawn.completions[row],
                    "reward": drawn.scores.total[row].item(),
                }
            )
        return record

    def train(self, start_step: int = 0, on_eval=None) -> list[dict]:
        """Run the remaining steps; ``on_eval(step)`` is called every ``eval.every`` steps."""
        t = self.recipe.train
        records = []
        with progress("train", total=t.steps) as bar:
            bar.advance(start_step)
            for step in range(start_step, t.steps):
                record = self.step(step)
                records.append(record)
                bar.advance()
                bar.show(
                    f"reward {record['reward']:.3f}  acc {record['accuracy']:.2f}  "
                    f"fmt {record['format']:.2f}  len {record['completion_length']:.0f}"
                )
                done = step + 1
                if self.recipe.eval.every and done % self.recipe.eval.every == 0 and done < t.steps and on_eval:
                    on_eval(done)
                if self.recipe.run.save_every and done % self.recipe.run.save_every == 0:
                    self.run.save_checkpoint(
                        done, self.model, self.optimizer, self.scheduler, self.generator, self.sampler
                    )
        return records


def micro_batches(
    lengths: torch.Tensor, advantages: torch.Tensor, size: int, skip_zero_advantage: bool
) -> list[torch.Tensor]:
    """Row indices per micro-batch: rows that can move the policy, sorted by completion length.

    With no KL term a row of advantage 0 has loss and gradient exactly 0 (``min(r·0, clip(r)·0)``), so
    leaving it out changes nothing but the time; every row of a group whose rewards are all equal is such a
    row. Similar lengths side by side waste little compute on padding.

    >>> micro_batches(torch.tensor([9, 2, 5, 7]), torch.tensor([1.0, 0.0, -1.0, 0.5]), 2, skip_zero_advantage=True)
    [tensor([2, 3]), tensor([0])]
    """
    rows = torch.arange(advantages.numel())
    if skip_zero_advantage:
        rows = rows[advantages != 0]
    rows = rows[torch.argsort(lengths[rows], stable=True)]
    return list(rows.split(size)) if rows.numel() else []


def _pass_rate(groups: Groups, group: int) -> float:
    """Share of the group that was right; without reference answers, 0.5 if its rewards differ, else 0."""
    g = groups.group_size
    if groups.correct is None:
        return 0.0 if groups.flat[group] else 0.5
    return _mean(groups.correct[group * g : (group + 1) * g])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _per_function(scores: RewardScores) -> dict[str, float]:
    out = {}
    for name, row in zip(scores.names, scores.per_function, strict=True):
        valid = row[~torch.isnan(row)]
        out[f"reward/{name}"] = valid.mean().item() if valid.numel() else math.nan
        out[f"reward/{name}_std"] = valid.std().item() if valid.numel() > 1 else 0.0
    return out
