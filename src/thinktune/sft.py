"""Supervised fine-tuning on worked answers, the loss on completion tokens only: a recipe's ``sft`` stage.

It teaches the output format (and the dataset's way of reasoning) before GRPO, so that GRPO's groups are not all
zero. The target of each example is ``sft.completion`` filled from its fields, then end-of-sequence; the prompt is
built exactly as GRPO builds it. With LoRA the adapters are merged at the end, so the saved folder is a plain
Hugging Face model that ``train`` starts from (and whose fresh adapters then start at zero).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from thinktune.config import ConfigError, Recipe
from thinktune.console import console, progress
from thinktune.data import DataError, Example, PromptBuilder
from thinktune.distributed import SINGLE, Ranks
from thinktune.logits import head_token_logprobs, token_logprobs
from thinktune.logprobs import SharedPrompts
from thinktune.modeling import decoder_stack, plain_head, right_pad, shared_prefix
from thinktune.models import save_model
from thinktune.parallel import parallel_engine
from thinktune.run_dir import RunDir
from thinktune.savers import checkpointed_layers
from thinktune.tokens import length_groups
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
class SFTData:
    prompts: list[list[int]]
    targets: list[list[int]]
    too_long: int = 0  # targets over sft.max_completion_tokens, skipped
    empty: int = 0  # targets that render to nothing, skipped
    prompts_skipped: int = 0  # prompts over data.max_prompt_tokens, skipped


def render_target(template: str, example: Example, index: int) -> str:
    """``sft.completion`` filled from the example's fields; a missing field names the example and its fields.

    >>> render_target("{answer} because {metadata[why]}", Example("q", "4", {"metadata": {"why": "2+2"}}), 0)
    '4 because 2+2'
    """
    fields = example.columns()
    try:
        return template.format(**fields)
    except (KeyError, IndexError, AttributeError, TypeError) as err:
        raise ConfigError(
            f"sft.completion: example {index} has no field {err} for the template; its fields: {sorted(fields)}"
        ) from None


def sft_data(recipe: Recipe, examples: list[Example], tokenizer) -> SFTData:
    """Tokenized (prompt, target) pairs; a template field an example lacks is an error naming both."""
    cfg = recipe.sft
    builder = PromptBuilder.from_config(tokenizer, recipe.data)
    data = SFTData([], [])
    for index, example in enumerate(examples):
        text = render_target(cfg.completion, example, index)
        if not text.strip():
            data.empty += 1
            continue
        prompt = builder.ids(example.question)
        if prompt is None:
            data.prompts_skipped += 1
            continue
        target = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(target) > cfg.max_completion_tokens:
            data.too_long += 1
            continue
        data.prompts.append(prompt)
        data.targets.append(target)
    if not data.targets:
        raise DataError(
            f"sft: none of the {len(examples)} examples is usable: {data.too_long} targets over "
            f"sft.max_completion_tokens={cfg.max_completion_tokens}, {data.prompts_skipped} prompts over "
            f"data.max_prompt_tokens={recipe.data.max_prompt_tokens}, {data.empty} empty targets"
        )
    return data


def completion_loss(
    model, prompts: list[list[int]], targets: list[list[int]], pad_id: int, tokens: int | None = None
) -> torch.Tensor:
    """Mean negative log-likelihood of the target tokens given their prompts (prompt tokens carry no loss).

    Every target token weighs the same, whatever the length of its example. ``tokens``: the count the sum is divided
    by, when these targets are part of a batch of that many target tokens (default: their own). Each example runs
    as one sequence, prompt then target, right-padded to the longest (a left-padded prompt before a right-padded
    target would pad to the longest prompt plus the longest target); only the positions that predict a target token
    go through the LM head. On a Llama-family model a prefix every prompt shares (:func:`shared_prefix`, e.g. the
    system message) runs once and the sequences' rests attend to it.
    """
    head = plain_head(model)
    shared = shared_prefix(prompts) if head is not None else 0
    prefix_tokens, prompts = prompts[0][:shared], [p[shared:] for p in prompts]
    ids, mask = right_pad([p + t for p, t in zip(prompts, targets, strict=True)], pad_id)
    # Position j predicts token j + 1: an example's targets are predicted from its prompt's last position on.
    rows = torch.cat([torch.full((len(t),), row) for row, t in enumerate(targets)])
    cols = torch.cat([torch.arange(len(p) - 1, len(p) + len(t) - 1) for p, t in zip(prompts, targets, strict=True)])
    device = next(model.parameters()).device
    ids, mask, rows, cols = ids.to(device), mask.to(device), rows.to(device), cols.to(device)
    labels = ids[rows, cols + 1]
    if head is None:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[rows, cols].float()
        logprobs = token_logprobs(logits, labels)
    else:
        if shared:
            prefix_ids = torch.tensor([prefix_tokens], device=device)
            prefix = SharedPrompts.encode(model, prefix_ids, torch.ones_like(prefix_ids), detach=False)
            hidden = prefix.completion_hidden(model, torch.zeros_like(ids[:, 0]), ids, mask)
        else:
            hidden = decoder_stack(model)(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        logprobs, _ = head_token_logprobs(hidden[rows, cols], head.weight, labels)
    return -logprobs.sum() / (len(labels) if tokens is None else tokens)


def run_sft(
    recipe: Recipe, model, tokenizer, examples: list[Example], tracker: Tracker, run: RunDir, resume: bool = False,
    ranks: Ranks = SINGLE,
) -> list[dict]:  # fmt: skip
    """Train ``model`` in place for ``sft.steps`` steps, checkpointing every ``run.save_every`` steps (and on
    Ctrl-C/SIGTERM); log each step (stage ``sft``); return the records of this run's steps. With ``resume``,
    continue after the last checkpoint. Several processes (DDP) draw the same batch and train on their shares of it;
    the loss is the whole batch's."""
    cfg = recipe.sft
    data = sft_data(recipe, examples, tokenizer)
    console.print(
        f"sft: {len(data.targets)} examples ({data.too_long} over sft.max_completion_tokens, "
        f"{data.prompts_skipped} prompts over budget, {data.empty} empty targets skipped)"
    )
    engine = parallel_engine(recipe, model, ranks)  # ddp wraps the decoder stack; one process: nothing
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg.learning_rate, recipe.train)
    scheduler = make_scheduler(optimizer, "constant", cfg.warmup_steps, cfg.steps)
    batches = EpochBatches(len(data.targets), recipe.train.seed)
    guard = NonFiniteGuard(recipe.train.max_nonfinite_steps)
    parts = {"optimizer": optimizer, "scheduler": scheduler, "batches": batches}
    checkpoints = StageCheckpoints(run, recipe, model, parts, "sft", tracker, cfg.steps, ranks)
    start = checkpoints.resume() if resume else 0
    records = []
    model.train()
    savers = checkpointed_layers(model, recipe.train.gradient_checkpointing)
    with progress("sft", total=cfg.steps) as bar, stop_requests() as stop, savers:
        bar.advance(start)
        for step in range(start, cfg.steps):
            batch = batches.next(cfg.batch_size)
            start = time.perf_counter()
            tokens = sum(len(data.targets[i]) for i in batch)
            loss_value = ranks.sum(
                accumulate_loss(model, engine, data, ranks.share(batch), tokens, cfg, tokenizer, recipe.train.autocast)
            )
            grad_norm = gradient_step(optimizer, scheduler, params, recipe.train.max_grad_norm, loss_value)
            record = {
                "loss": loss_value,
                "grad_norm": grad_norm,
                "nonfinite_skipped": float(not guard.check(step + 1, loss_value, grad_norm)),
                "lr": scheduler.get_last_lr()[0],
                "target_tokens": tokens,
                "seconds": time.perf_counter() - start,
            }
            tracker.log(step + 1, record, stage="sft")
            records.append({"step": step + 1, **record})
            bar.advance()
            bar.show(f"loss {record['loss']:.3f}")
            checkpoints.after_step(step + 1, stop)
    model.eval()
    return records


def accumulate_loss(
    model, engine, data: SFTData, rows: list[int], tokens: int, cfg, tokenizer, precision: str = "none"
) -> float:
    """Backpropagate this process's ``rows`` of a batch of ``tokens`` target tokens, in passes of at most
    ``sft.micro_batch_tokens`` (:func:`length_groups`), under ``train.autocast`` (``precision``); return their part
    of the batch's loss. Each pass's loss is its sum over the whole batch's tokens, so the passes add up to the
    batch's gradient; with several processes DDP averages them, which the engine's loss scale makes the sum, and
    only the last pass reduces."""
    lengths = [len(data.prompts[i]) + len(data.targets[i]) for i in range(len(data.targets))]
    groups = length_groups(rows, lengths, cfg.micro_batch_tokens)
    loss = 0.0
    for number, group in enumerate(groups):
        prompts, targets = [data.prompts[i] for i in group], [data.targets[i] for i in group]
        with engine.accumulating() if number < len(groups) - 1 else contextlib.nullcontext():
            with autocast(model, precision):
                part = completion_loss(model, prompts, targets, tokenizer.pad_token_id, tokens)
            (part * engine.loss_scale).backward()
        loss += part.item()
    return loss


def save_sft_model(model, tokenizer, folder) -> None:
    """A plain Hugging Face folder: LoRA adapters merged into the weights first."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    save_model(model, tokenizer, folder)
