"""Format rewards: the answer format exactly (strict), its tags in order (soft), and tag-count shaping."""

from __future__ import annotations

import re

from thinktune.rewards.registry import register_reward

_STRICT = {
    "xml": re.compile(r"^\s*<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\s*$", re.DOTALL),
    "think": re.compile(r"^\s*<think>.*?</think>\s*\S.*$", re.DOTALL),
}
_SOFT = {
    "xml": re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.DOTALL),
    "think": re.compile(r"<think>.*?</think>", re.DOTALL),
}
# Each tag, with the line breaks of the strict format, and its share of the tag-count reward.
_TAGS = {
    "xml": {"<reasoning>\n": 0.25, "\n</reasoning>\n": 0.25, "\n<answer>\n": 0.25, "\n</answer>": 0.25},
    "think": {"<think>": 0.5, "</think>": 0.5},
}
TRAILING_PENALTY_PER_CHAR = 0.001


def is_strict_format(completion: str, answer_format: str = "xml") -> bool:
    return _STRICT[answer_format].match(completion) is not None


@register_reward("format")
def format_reward(prompts, completions, answer_format: str = "xml", **_) -> list[float]:
    """1.0 when the whole completion follows the answer format exactly, else 0.0.

    xml: ``<reasoning>\\n…\\n</reasoning>\\n<answer>\\n…\\n</answer>`` and nothing else around it.
    think: ``<think>…</think>`` followed by a non-empty answer.

    >>> format_reward(None, ["<reasoning>\\n2+2=4\\n</reasoning>\\n<answer>\\n4\\n</answer>", "4"])
    [1.0, 0.0]
    """
    return [float(is_strict_format(c, answer_format)) for c in completions]


@register_reward("format_soft")
def format_soft_reward(prompts, completions, answer_format: str = "xml", **_) -> list[float]:
    """1.0 when the format's tags appear in order anywhere, whitespace and surrounding text allowed.

    >>> format_soft_reward(None, ["Sure! <reasoning>2+2</reasoning> <answer>4</answer>", "<answer>4</answer>"])
    [1.0, 0.0]
    """
    return [float(_SOFT[answer_format].search(c) is not None) for c in completions]


@register_reward("tag_count")
def tag_count_reward(prompts, completions, answer_format: str = "xml", **_) -> list[float]:
    """Shaping toward the format: a share for each tag that appears exactly once, minus text after the end.

    xml: 0.25 for each of ``<reasoning>\\n``, ``\\n</reasoning>\\n``, ``\\n<answer>\\n``, ``\\n</answer>``
    present exactly once, minus 0.001 per character after the last ``</answer>`` (at most 0.25).
    think: 0.5 each for ``<think>`` and ``</think>`` exactly once.

    >>> good = "<reasoning>\\nx\\n</reasoning>\\n<answer>\\n4\\n</answer>"
    >>> tag_count_reward(None, [good, "<answer>\\n4\\n</answer>ok"])
    [1.0, 0.248]
    """
    scores = []
    for completion in completions:
        score = sum(share for tag, share in _TAGS[answer_format].items() if completion.count(tag) == 1)
        if answer_format == "xml" and "</answer>" in completion:
            trailing = len(completion.rsplit("</answer>", 1)[1].rstrip("\n"))
            score -= min(0.25, TRAILING_PENALTY_PER_CHAR * trailing)
        scores.append(round(score, 6))
    return scores
