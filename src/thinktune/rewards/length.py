"""Length rewards: characters to an ideal length, tokens to a target with an asymmetric penalty, and a soft
penalty for completions near the generation limit (DAPO's overlong shaping)."""

from __future__ import annotations

from thinktune.rewards.registry import register_reward


def _token_counts(completions: list[str], tokenizer) -> list[int]:
    if tokenizer is None:
        raise ValueError("needs the model's tokenizer (given by the trainer; pass tokenizer=... when calling directly)")
    return [len(ids) for ids in tokenizer(list(completions), add_special_tokens=False)["input_ids"]]


@register_reward("length_chars")
def length_chars_reward(prompts, completions, ideal: int = 200, **_) -> list[float]:
    """``1 - |characters - ideal| / ideal``: 1.0 at the ideal length, falling linearly both ways, below 0
    past twice the ideal (so a rambling answer still ranks under a merely long one).

    >>> length_chars_reward(None, ["x" * 100, "x" * 50, "x" * 300], ideal=100)
    [1.0, 0.5, -1.0]
    """
    if ideal <= 0:
        raise ValueError(f"ideal must be positive, got {ideal}")
    return [1.0 - abs(len(c) - ideal) / ideal for c in completions]


@register_reward("length_tokens")
def length_tokens_reward(prompts, completions, target: int = 128, over_weight: float = 2.0, tokenizer=None, **_):
    """Tokens against a target, with going over costing ``over_weight`` times more than falling short:
    ``1 - (target - n) / target`` for n ≤ target, ``1 - over_weight · (n - target) / target`` above.

    Target 100: 100 tokens score 1.0, 80 tokens 0.8, 120 tokens 1 - 2 · 0.2 = 0.6.
    """
    if target <= 0:
        raise ValueError(f"target must be positive, got {target}")
    scores = []
    for n in _token_counts(completions, tokenizer):
        short, over = max(0, target - n), max(0, n - target)
        scores.append(1.0 - short / target - over_weight * over / target)
    return scores


@register_reward("overlong")
def overlong_reward(prompts, completions, max_new_tokens: int = 512, buffer: int | None = None, tokenizer=None, **_):
    """0 up to ``max_new_tokens - buffer`` tokens, then falling linearly to -1 at the limit, -1 beyond it.

    ``buffer`` defaults to a quarter of the limit. Limit 100, buffer 20: 70 tokens score 0, 90 score -0.5,
    100 and more score -1. The trainer passes the recipe's ``grpo.max_new_tokens``.
    """
    buffer = max(1, max_new_tokens // 4) if buffer is None else buffer
    if not 0 < buffer <= max_new_tokens:
        raise ValueError(f"buffer must be in 1..max_new_tokens ({max_new_tokens}), got {buffer}")
    start = max_new_tokens - buffer
    return [max(-1.0, min(0.0, (start - n) / buffer)) for n in _token_counts(completions, tokenizer)]
