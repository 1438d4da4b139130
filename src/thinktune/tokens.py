"""Token helpers shared by generation, training and evaluation: end-of-sequence ids, decoding, and passes of rows
filled up to a token budget."""

from __future__ import annotations

import torch


def eos_token_ids(tokenizer) -> list[int]:
    """Every id that ends a completion: the tokenizer's end-of-sequence token and ``<|im_end|>`` if it has one."""
    ids = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(i for i in ids if i is not None)


def decode(tokenizer, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """The text of each row's masked tokens, special tokens left out."""
    return [tokenizer.decode(row[m.bool()], skip_special_tokens=True) for row, m in zip(ids, mask, strict=True)]


def length_groups(
    rows: list[int], lengths: list[int], budget: int | None, max_rows: int | None = None
) -> list[list[int]]:
    """``rows`` in passes of similar length: sorted by ``lengths`` (ties keep their order), each pass as many as fit
    ``budget`` padded tokens (its row count times its longest; a row longer than the budget runs alone) and at most
    ``max_rows``; ``None`` sets no limit.

    >>> length_groups([0, 1, 2, 3], [5, 40, 6, 30], budget=64)
    [[0, 2], [3], [1]]
    >>> length_groups([0, 1, 2, 3], [5, 40, 6, 30], budget=None, max_rows=3)
    [[0, 2, 3], [1]]
    """
    groups: list[list[int]] = []
    for row in sorted(rows, key=lambda r: lengths[r]):
        size = len(groups[-1]) + 1 if groups else 0
        if groups and (max_rows is None or size <= max_rows) and (budget is None or size * lengths[row] <= budget):
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups
