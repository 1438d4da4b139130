"""Pull the final answer out of a completion in one of the answer formats."""

from __future__ import annotations

import re

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ANSWER_OPEN = re.compile(r"<answer>(.*)$", re.DOTALL)
_AFTER_THINK = re.compile(r"</think>(.*)$", re.DOTALL)

# Graders see at most this many characters of an answer section (its tail): enough for a boxed answer followed by
# pages of chatter, while a runaway section cannot stall parsing (the grader process bounds the time as well).
MAX_ANSWER_CHARS = 20_000


def extract_answer(completion: str, answer_format: str = "xml") -> str | None:
    """The answer part of a completion, or None when the format gives none.

    >>> extract_answer("<reasoning>2+2</reasoning>\\n<answer>\\n4\\n</answer>")
    '4'
    >>> extract_answer("<think>hmm</think> The answer is 4.", "think")
    'The answer is 4.'
    """
    if answer_format == "xml":
        found = _ANSWER.findall(completion) or _ANSWER_OPEN.findall(completion)
        answer = found[-1] if found else None
    else:
        found = _AFTER_THINK.findall(completion)
        answer = found[-1] if found else None
    if answer is None:
        return None
    return answer.strip()[-MAX_ANSWER_CHARS:]


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{…}`` (or ``\\fbox{…}``) in ``text``, braces balanced; None if absent.

    One linear scan from the last marker: 10 000 nested braces cost microseconds, not a recursion.

    >>> last_boxed("so $\\\\boxed{\\\\frac{1}{2}}$ and not \\\\boxed{3"), last_boxed("no box")
    (None, None)
    >>> last_boxed("first \\\\boxed{1}, then \\\\boxed{\\\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    """
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    begin = text.index("{", start) + 1
    depth = 1
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i].strip()
    return None
