"""Passages of a public-domain story to summarise: an offline stand-in for a summarisation set (SmolTLDR).

reasoning-gym ships the Project Gutenberg text of *In the Year 2889* (Jules and Michel Verne) for its word
tasks. Its story paragraphs, one to four consecutive ones of up to 250 words, are the texts to summarise. Training
passages come from the first 80% of the story and held-out passages from the rest, so the two never share a
paragraph. There is no reference summary (the answer is empty): the rewards that fit are length rewards or a
reward model.

    data: {source: passages, train_size: 200, eval_size: 40}
"""

from __future__ import annotations

import random

from thinktune.data.types import EVAL_SEED_OFFSET, DataError, Example

STORY = "in_the_year_2889.txt"
MAX_PARAGRAPHS = 4
MAX_WORDS = 250  # about the length of a SmolTLDR post
TRAIN_SHARE = 0.8
MIN_WORDS = 8  # shorter blocks are headings


def story_paragraphs() -> list[str]:
    """The story's paragraphs, each on one line, without the Project Gutenberg header, licence and short blocks."""
    from reasoning_gym.data import read_data_file

    text = read_data_file(STORY)
    start, end = text.find("*** START OF"), text.find("*** END OF")
    if start < 0 or end < 0:
        raise DataError(f"reasoning-gym's {STORY} lacks the Project Gutenberg start/end markers")
    body = text[text.index("\n", start) : end].split("End of Project Gutenberg")[0]
    blocks = (" ".join(block.split()) for block in body.split("\n\n"))
    return [b for b in blocks if len(b.split()) >= MIN_WORDS and not b.startswith("[")]


def windows(paragraphs: list[str]) -> list[str]:
    """Every run of 1..MAX_PARAGRAPHS consecutive paragraphs of at most MAX_WORDS words, joined by blank lines."""
    runs = (
        paragraphs[start : start + n] for n in range(1, MAX_PARAGRAPHS + 1) for start in range(len(paragraphs) - n + 1)
    )
    return ["\n\n".join(run) for run in runs if sum(len(p.split()) for p in run) <= MAX_WORDS]


def _sample(candidates: list[str], size: int, seed: int, split: str) -> list[Example]:
    if size > len(candidates):
        raise DataError(f"data: passages has {len(candidates)} distinct {split} passages, fewer than the {size} asked")
    chosen = random.Random(seed).sample(candidates, size)
    return [Example(question=text, answer="", extra={"words": len(text.split())}) for text in chosen]


def passage_splits(cfg) -> tuple[list[Example], list[Example], None]:
    """``train_size`` and ``eval_size`` distinct passages, from disjoint parts of the story."""
    paragraphs = story_paragraphs()
    cut = int(len(paragraphs) * TRAIN_SHARE)
    train = _sample(windows(paragraphs[:cut]), cfg.train_size, cfg.seed, "training")
    held_out = _sample(windows(paragraphs[cut:]), cfg.eval_size, cfg.seed + EVAL_SEED_OFFSET, "held-out")
    return train, held_out, None
