"""A reward model from preference pairs: `thinktune reward-model RECIPE.yaml`.

A sequence classifier with one label scores prompt + response. It is trained with the Bradley-Terry loss so
that the chosen response outscores the rejected one. Held-out pair accuracy (chosen scored above rejected) is
measured before and after training. The model is saved in standard form (a peft adapter with the score head, or
a full model), and the `reward_model` reward and `thinktune eval` load it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from thinktune.config import Recipe
from thinktune.console import console, peak_rss_gb, progress
from thinktune.data import DataError
from thinktune.data.tables import read_table
from thinktune.distributed import SINGLE, Ranks
from thinktune.models import save_model
from thinktune.pairs import pairs_path
from thinktune.rewards.reward_model import scoring_tokenizer, sequence_scores
from thinktune.run_dir import RunDir
from thinktune.savers import checkpointed_layers
from thinktune.tracking import Tracker
from thinktune.training import (
    EpochBatches,
    NonFiniteGuard,
    StageCheckpoints,
    gradient_step,
    make_optimizer,
    make_scheduler,
    stop_requests,
)


@dataclass
class Pairs:
    prompts: list[str] = field(default_factory=list)
    chosen: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    skipped_empty: int = 0  # a side with no text
    skipped_identical: int = 0  # chosen == rejected: no preference to learn

    def __len__(self) -> int:
        return len(self.chosen)

    def take(self, rows) -> Pairs:
        rows = list(rows)
        return Pairs([self.prompts[i] for i in rows], [self.chosen[i] for i in rows], [self.rejected[i] for i in rows])


def read_pairs(path: str) -> Pairs:
    """Pairs from a JSONL/CSV/Parquet file with ``prompt``, ``chosen``, ``rejected``; unusable pairs are counted."""
    pairs = Pairs()
    for index, row in enumerate(read_table(path)):
        for key in ("prompt", "chosen", "rejected"):
            if key not in row:
                raise DataError(f"{path}: row {index} has no column {key!r}; columns present: {sorted(row)}")
        chosen, rejected = str(row["chosen"] or ""), str(row["rejected"] or "")
        if not chosen.strip() or not rejected.strip():
            pairs.skipped_empty += 1
        elif chosen.strip() == rejected.strip():
            pairs.skipped_identical += 1
        else:
            pairs.prompts.append(str(row["prompt"] or ""))
            pairs.chosen.append(chosen)
            pairs.rejected.append(rejected)
    return pairs


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """``-log sigmoid(r_chosen - r_rejected)``, averaged: the negative log-likelihood that chosen wins.

    Scores 2 vs 0 give -log sigmoid(2) = 0.127; equal scores give log 2 = 0.693.

    >>> round(bradley_terry_loss(torch.tensor([2.0, 1.0]), torch.tensor([0.0, 1.0])).item(), 3)  # (0.127 + 0.693) / 2
    0.41
    """
    return -F.logsigmoid(chosen - rejected).mean()


@torch.no_grad()
def pair_accuracy(model, tokenizer, pairs: Pairs, max_length: int, batch_size: int = 8) -> float:
    """Share of pairs whose chosen response scores strictly above the rejected one."""
    wins = 0
    for i in range(0, len(pairs), batch_size):
        batch = pairs.take(range(i, min(i + batch_size, len(pairs))))
        chosen, rejected = _pair_scores(model, tokenizer, batch, max_length)
        wins += int((chosen > rejected).sum())
    return wins / len(pairs)


def _pair_scores(model, tokenizer, pairs: Pairs, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    texts = [p + c for p, c in zip(pairs.prompts, pairs.chosen, strict=True)]
    texts += [p + r for p, r in zip(pairs.prompts, pairs.rejected, strict=True)]
    scores = sequence_scores(model, tokenizer, texts, max_length)
    return scores[: len(pairs)], scores[len(pairs) :]


def accumulate_gradients(model, tokenizer, pairs: Pairs, cfg, ddp=None, ranks: Ranks = SINGLE) -> tuple[float, float]:
    """Backpropagate the mean Bradley-Terry loss of ``pairs``, ``cfg.micro_batch_size`` pairs at a time (long
    pairs' activations are what fills memory; the gradient is the full batch's). Returns (loss, mean margin).

    With several processes ``pairs`` is this process's share of a batch ``ranks.world`` times as large and
    ``model`` runs under ``ddp``: every micro-batch but the last keeps its gradient local (``no_sync``), the last
    reduces them all, and the loss is scaled by the process count since DDP averages. The loss and margin returned
    are the whole batch's."""
    loss = margin = 0.0
    trained, whole = ddp or model, len(pairs) * ranks.world
    for first in range(0, len(pairs), cfg.micro_batch_size):
        last = first + cfg.micro_batch_size >= len(pairs)
        part = pairs.take(range(first, min(first + cfg.micro_batch_size, len(pairs))))
        with contextlib.nullcontext() if ddp is None or last else ddp.no_sync():
            chosen, rejected = _pair_scores(trained, tokenizer, part, cfg.max_length)
            share = len(part) / whole
            part_loss = bradley_terry_loss(chosen, rejected)
            (part_loss * (share * ranks.world)).backward()
        loss += part_loss.item() * share
        margin += (chosen - rejected).mean().item() * share
    return ranks.sum(loss), ranks.sum(margin)


def load_reward_model_for_training(recipe: Recipe):
    """A one-label sequence classifier on the recipe's model, LoRA-wrapped (score head trained in full) or full."""
    from transformers import AutoModelForSequenceClassification

    from thinktune.models import add_lora, resolve_model

    path = resolve_model(recipe.model.name)
    tokenizer = scoring_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    if recipe.model.finetune == "lora":
        model = add_lora(model, recipe.model, task_type="SEQ_CLS")
    return model, tokenizer


def split_pairs(recipe: Recipe):
    """The usable pairs of the recipe's pairs file, then its training pairs and its last ``eval_pairs`` (held out)."""
    cfg = recipe.reward_model
    pairs_file = cfg.pairs or str(pairs_path(recipe))
    pairs = read_pairs(pairs_file)
    console.print(
        f"pairs: {len(pairs)} usable, {pairs.skipped_empty} with an empty side and "
        f"{pairs.skipped_identical} with chosen == rejected skipped"
    )
    if len(pairs) <= cfg.eval_pairs:
        raise DataError(
            f"{pairs_file}: {len(pairs)} usable pairs cannot hold out reward_model.eval_pairs={cfg.eval_pairs}"
        )
    split = len(pairs) - cfg.eval_pairs
    return pairs, pairs.take(range(split)), pairs.take(range(split, len(pairs)))


def train_reward_model(
    recipe: Recipe, run: RunDir, tracker: Tracker, resume: bool = False, ranks: Ranks = SINGLE
) -> dict:
    """Train on the pairs file, report held-out pair accuracy before and after, save ``<run>/reward_model``.
    Checkpoints every ``run.save_every`` steps (and on Ctrl-C/SIGTERM); ``resume`` continues after the last.
    Several processes (DDP) draw the same batch and train on their shares of it; process 0 alone measures, saves
    and returns the summary, and the others wait for it."""
    cfg = recipe.reward_model
    torch.manual_seed(recipe.train.seed)
    pairs, train_pairs, held_out = split_pairs(recipe)
    model, tokenizer = load_reward_model_for_training(recipe)
    before = pair_accuracy(model.eval(), tokenizer, held_out, cfg.max_length) if ranks.main else 0.0
    console.print(f"held-out pair accuracy before: {before:.3f} ({len(held_out)} pairs)")
    ddp = torch.nn.parallel.DistributedDataParallel(model) if ranks.world > 1 else None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg.learning_rate, recipe.train)
    scheduler = make_scheduler(optimizer, "constant", 0, cfg.steps)
    batches = EpochBatches(len(train_pairs), recipe.train.seed)
    guard = NonFiniteGuard(recipe.train.max_nonfinite_steps)
    parts = {"optimizer": optimizer, "scheduler": scheduler, "batches": batches}
    checkpoints = StageCheckpoints(run, recipe, model, parts, "reward_model", tracker, cfg.steps, ranks)
    first = checkpoints.resume() if resume else 0
    start = time.perf_counter()
    model.train()
    savers = checkpointed_layers(model, recipe.train.gradient_checkpointing)
    with progress("reward model", total=cfg.steps) as bar, stop_requests() as stop, savers:
        bar.advance(first)
        for step in range(first, cfg.steps):
            rows = ranks.share(batches.next(cfg.batch_size))
            loss, margin = accumulate_gradients(model, tokenizer, train_pairs.take(rows), cfg, ddp, ranks)
            grad_norm = gradient_step(optimizer, scheduler, params, recipe.train.max_grad_norm, loss)
            skipped = float(not guard.check(step + 1, loss, grad_norm))
            record = {"loss": loss, "margin": margin, "grad_norm": grad_norm, "nonfinite_skipped": skipped}
            tracker.log(step + 1, record, stage="reward_model")
            bar.advance()
            bar.show(f"loss {loss:.3f}")
            checkpoints.after_step(step + 1, stop)
    seconds = time.perf_counter() - start
    if not ranks.main:
        return {}
    after = pair_accuracy(model.eval(), tokenizer, held_out, cfg.max_length)
    console.print(f"held-out pair accuracy after: {after:.3f}")
    folder = run.file("reward_model")
    save_model(model, tokenizer, folder)
    console.print(f"saved {folder}")
    counts = {"train": len(train_pairs), "held_out": len(held_out), "skipped_empty": pairs.skipped_empty,
              "skipped_identical": pairs.skipped_identical}  # fmt: skip
    summary = {
        "pairs": counts,
        "pair_accuracy_before": before,
        "pair_accuracy_after": after,
        "seconds": seconds,
        "peak_rss_gb": peak_rss_gb(),
    }
    console.print(f"reward model: {cfg.steps} steps in {seconds:.0f} s; peak memory {summary['peak_rss_gb']:.1f} GB")
    run.write_json("reward_model_summary.json", summary)
    return summary
