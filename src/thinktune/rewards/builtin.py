"""Built-in rewards: answer format (strict, soft), math-verify accuracy, and the reasoning-gym scorer."""

from __future__ import annotations

import re
import threading

from thinktune.rewards.extract import extract_answer
from thinktune.rewards.registry import register_reward

_STRICT = {
    "xml": re.compile(r"^\s*<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\s*$", re.DOTALL),
    "think": re.compile(r"^\s*<think>.*?</think>\s*\S.*$", re.DOTALL),
}
_SOFT = {
    "xml": re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.DOTALL),
    "think": re.compile(r"<think>.*?</think>", re.DOTALL),
}


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


def _timeout() -> int | None:
    # math-verify bounds its time with signal.alarm, which only works in the main thread.
    return 2 if threading.current_thread() is threading.main_thread() else None


def math_equal(gold: str, answer: str) -> bool:
    """math-verify equivalence of an answer to the gold reference (gold parsed first), time-bounded.

    >>> math_equal("0.5", "\\\\frac{1}{2}"), math_equal("3", "4")
    (True, False)
    """
    from math_verify import parse, verify

    timeout = _timeout()
    gold_parsed = parse(gold, parsing_timeout=timeout) or parse(f"${gold}$", parsing_timeout=timeout)
    if not gold_parsed:
        return gold.strip() == answer.strip()
    candidate = parse(answer, parsing_timeout=timeout) or parse(f"${answer}$", parsing_timeout=timeout)
    return bool(candidate) and verify(gold_parsed, candidate, timeout_seconds=timeout)


@register_reward("accuracy")
def accuracy_reward(prompts, completions, answer, answer_format: str = "xml", **_) -> list[float]:
    """1.0 when the completion's answer is mathematically equal to the reference (math-verify), else 0.0.

    The answer is the ``<answer>`` content (xml) or the text after ``</think>`` (think); a completion without
    one scores 0.

    >>> accuracy_reward(None, ["<answer>\\n-4\\n</answer>", "<answer>4</answer>", "-4"], answer=["-4"] * 3)
    [1.0, 0.0, 0.0]
    """
    scores = []
    for completion, gold in zip(completions, answer, strict=True):
        extracted = extract_answer(completion, answer_format)
        scores.append(float(extracted is not None and math_equal(str(gold), extracted)))
    return scores


@register_reward("task_score")
def task_score_reward(
    prompts, completions, answer, metadata=None, question=None, task_dataset=None, answer_format="xml", **_
) -> list[float | None]:
    """The reasoning-gym task's own scorer (0..1, partial credit where the task gives it) on the answer.

    Needs a reasoning-gym data source; ``None`` (not applicable) for rows without task metadata.
    For basic_arithmetic, reference "-4": answer "-4" scores 1.0, "4" scores 0.0.
    """
    if task_dataset is None:
        raise ValueError("task_score needs data.source=reasoning_gym")
    scores: list[float | None] = []
    for i, completion in enumerate(completions):
        if metadata is None or metadata[i] is None:
            scores.append(None)
            continue
        entry = {"question": question[i] if question else "", "answer": answer[i], "metadata": metadata[i]}
        extracted = extract_answer(completion, answer_format)
        scores.append(float(task_dataset.score_answer(answer=extracted, entry=entry)))
    return scores
