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
from thinktune.logprobs import SharedPrompts
from thinktune.modeling import left_pad, right_pad
from thinktune.models import save_model
from thinktune.pairs import pairs_path
from thinktune.rewards.reward_model import score_head, scored_position, scoring_ids, scoring_tokenizer, token_scores
from thinktune.run_dir import RunDir
from thinktune.savers import checkpointed_layers
from thinktune.tracking import Tracker
from thinktune.training import (
    EpochBatches,
    NonFiniteGuard,
    StageCheckpoints,
    autocast,
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
    """(chosen, rejected) scores, differentiable. A pair's two answers follow the same prompt: on a Llama-family
    classifier the tokens they share run once (:func:`shared_prefix_scores`); other models, and pairs cut so short
    that nothing is shared, run every sequence whole."""
    pad = tokenizer.pad_token_id
    chosen = scoring_ids(tokenizer, [p + c for p, c in zip(pairs.prompts, pairs.chosen, strict=True)], max_length)
    rejected = scoring_ids(tokenizer, [p + r for p, r in zip(pairs.prompts, pairs.rejected, strict=True)], max_length)
    shared = [shared_length(c, r, pad) for c, r in zip(chosen, rejected, strict=True)]
    if score_head(model) is None or min(shared) == 0:
        scores = token_scores(model, chosen + rejected, pad)
        return scores[: len(pairs)], scores[len(pairs) :]
    return shared_prefix_scores(model, chosen, rejected, shared, pad)


def shared_length(first: list[int], second: list[int], pad_id: int) -> int:
    """How many leading tokens two sequences can share in one pass: their common prefix, short of the position
    either is scored at (:func:`scored_position`), which its own pass must compute.

    >>> shared_length([1, 2, 3, 4], [1, 2, 5], pad_id=0)
    2
    >>> shared_length([1, 2], [1, 2, 3], pad_id=0)  # the first is scored at its last token, which stays its own
    1
    """
    common = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        common += 1
    return min(common, scored_position(first, pad_id), scored_position(second, pad_id))


def shared_prefix_scores(
    model, chosen: list[list[int]], rejected: list[list[int]], shared: list[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scores :func:`token_scores` gives ``chosen`` and ``rejected``, with pair i's first ``shared[i]`` tokens
    run once. The prefixes' pass keeps its keys and values; then the chosen rests and the rejected rests each run as
    a batch of their own, attending to them (so a long chosen answer does not pad out the short rejected ones), and
    the score head reads each at its scored position. One backward takes the gradient through all three passes.

    In the pairs recipes/cot_reward_model.yaml writes, the two sequences share 113 of the chosen one's 233 tokens
    on average, and a pass of 2 pairs computes 0.62 of the positions, padding included (printed by
    benchmarks/stage_steps.py)."""
    device = next(model.parameters()).device
    prefix_ids, prefix_mask = left_pad([c[:k] for c, k in zip(chosen, shared, strict=True)], pad_id)
    prefix = SharedPrompts.encode(model, prefix_ids.to(device), prefix_mask.to(device), detach=False)
    rows, head = torch.arange(len(chosen), device=device), score_head(model)

    def scores(sequences: list[list[int]]) -> torch.Tensor:
        ids, mask = right_pad([s[k:] for s, k in zip(sequences, shared, strict=True)], pad_id)
        hidden = prefix.completion_hidden(model, rows, ids.to(device), mask.to(device))
        at = torch.tensor([scored_position(s, pad_id) - k for s, k in zip(sequences, shared, strict=True)])
        return head(hidden[rows, at.to(device)]).float()[:, 0]

    return scores(chosen), scores(rejected)


def accumulate_gradients(
    model, tokenizer, pairs: Pairs, cfg, ddp=None, ranks: Ranks = SINGLE, precision: str = "none"
) -> tuple[float, float]:
    """Backpropagate the mean Bradley-Terry loss of ``pairs``, ``cfg.micro_batch_size`` pairs at a time (long
    pairs' activations are what fills memory; the gradient is the full batch's), the forward under
    ``train.autocast`` (``precision``). Returns (loss, mean margin).

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
            with autocast(model, precision):
                chosen, rejected = _pair_scores(trained, tokenizer, part, cfg.max_length)
            share = len(part) / whole
            part_loss = bradley_terry_loss(chosen, rejected)
            (part_loss * (share * ranks.world)).backward()
        loss += part_loss.item() * share
        margin += (chosen - rejected).mean().item() * share
    return ranks.sum(loss), ranks.sum(margin)


def load_reward_model_for_training(recipe: Recipe):
    """A one-label sequence classifier on the recipe's model, on its ``model.device`` in its ``model.dtype``,
    LoRA-wrapped (score head trained in full) or full."""
    from transformers import AutoModelForSequenceClassification

    from thinktune.cpu_attention import use_float32_attention
    from thinktune.models import add_lora, pick_device, resolve_model

    path = resolve_model(recipe.model.name)
    tokenizer = scoring_tokenizer(path)
    dtype = getattr(torch, recipe.model.dtype)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    model.to(pick_device(recipe.model.device))
    model.config.pad_token_id = tokenizer.pad_token_id
    use_float32_attention(model)
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
            rows, began = ranks.share(batches.next(cfg.batch_size)), time.perf_counter()
            loss, margin = accumulate_gradients(
                model, tokenizer, train_pairs.take(rows), cfg, ddp, ranks, recipe.train.autocast
            )
            grad_norm = gradient_step(optimizer, scheduler, params, recipe.train.max_grad_norm, loss)
            skipped = float(not guard.check(step + 1, loss, grad_norm))
            record = {"loss": loss, "margin": margin, "grad_norm": grad_norm, "nonfinite_skipped": skipped,
                      "seconds": time.perf_counter() - began}  # fmt: skip
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
