"""Tokenizer helpers shared by generation, training and evaluation."""

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
