"""Answer-correctness rewards: math-verify equivalence, GSM8K's exact-match conventions, numeric closeness.

Graders that parse model output run under :data:`thinktune.rewards.guard.GRADER` (a time bound per
completion); the plain-regex ones cost microseconds and run in-process on a bounded slice of the text.
"""

from __future__ import annotations

import functools
import logging
import math
import re

from thinktune.rewards.extract import MAX_ANSWER_CHARS, extract_answer
from thinktune.rewards.guard import GRADER
from thinktune.rewards.registry import register_reward

# lm-evaluation-harness gsm8k: "strict-match" takes the first "#### N"; "flexible-extract" the last number.
_GSM8K_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_GSM8K_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
_INTEGER = re.compile(r"-?\d+")
MAX_GRADED_CHARS = MAX_ANSWER_CHARS  # of a whole completion, for the regex graders (the tail, where answers sit)


@functools.cache
def _hush_disabled_timeout_warning() -> None:
    """math-verify warns that its time-outs are off; they are off on purpose (GRADER bounds every call)."""
    for name in ("math_verify.grader", "math_verify.parser"):
        logging.getLogger(name).addFilter(lambda record: "Timeout is disabled" not in record.getMessage())


def math_equal(gold: str, answer: str) -> bool:
    """math-verify equivalence of an answer to the gold reference (gold parsed first). In-process, unbounded:
    rewards call it through ``GRADER``.

    >>> math_equal("0.5", "\\\\frac{1}{2}"), math_equal("3", "4"), math_equal("\\\\boxed{2}", "$2$")
    (True, False, True)
    """
    import math_verify

    _hush_disabled_timeout_warning()
    # math-verify's own signal-based time-outs are off: GRADER's bound is the one that counts.
    parse = functools.partial(math_verify.parse, parsing_timeout=None)
    gold_parsed = parse(gold) or parse(f"${gold}$")
    if not gold_parsed:
        return gold.strip() == answer.strip()
    candidate = parse(answer) or parse(f"${answer}$")
    return bool(candidate) and math_verify.verify(gold_parsed, candidate, timeout_seconds=None)


@register_reward("accuracy")
def accuracy_reward(prompts, completions, answer, answer_format: str = "xml", **_) -> list[float]:
    """1.0 when the completion's answer is mathematically equal to the reference (math-verify), else 0.0.

    Numbers, fractions, LaTeX and ``\\boxed{}`` compare by value. The answer is the ``<answer>`` content
    (xml) or the text after ``</think>`` (think); a completion without one scores 0, and so does one whose
    grading times out.

    >>> accuracy_reward(None, ["<answer>\\n-4\\n</answer>", "<answer>4</answer>", "-4"], answer=["-4"] * 3)
    [1.0, 0.0, 0.0]
    """
    scores = []
    for completion, gold in zip(completions, answer, strict=True):
        extracted = extract_answer(completion, answer_format)
        scores.append(float(extracted is not None and GRADER.call(math_equal, str(gold), extracted)))
    return scores


def normalize_gsm8k(text: str) -> str:
    """lm-eval-harness's gsm8k normalisation: drop ``,`` and ``$``, anything up to ``#### ``, a trailing ``.``.

    >>> normalize_gsm8k("$1,234."), normalize_gsm8k("so #### 72")
    ('1234', '72')
    """
    text = re.sub(r"(?s).*#### ", "", text)
    return re.sub(r"\.$", "", text.replace(",", "").replace("$", "")).strip()


def gsm8k_strict_answer(completion: str) -> str | None:
    """The first ``#### N`` of the completion, normalised (lm-eval "strict-match")."""
    found = _GSM8K_STRICT.search(completion[-MAX_GRADED_CHARS:])
    return normalize_gsm8k(found.group(1)) if found else None


def gsm8k_flexible_answer(completion: str) -> str | None:
    """The last number-like run of the completion, normalised (lm-eval "flexible-extract")."""
    found = _GSM8K_FLEXIBLE.findall(completion[-MAX_GRADED_CHARS:])
    if not found:
        return None
    return normalize_gsm8k(next(group for group in found[-1] if group))


@register_reward("gsm8k_strict")
def gsm8k_strict_reward(prompts, completions, answer, **_) -> list[float]:
    """1.0 when the completion's first ``#### N`` equals the reference after GSM8K normalisation.

    N is digits, ``-``, ``.`` and ``,`` only, so ``#### $7`` does not count here (it does for the flexible one).

    >>> gsm8k_strict_reward(None, ["3 + 4 = 7\\n#### 7", "#### 7.", "#### 1,000", "#### $7"], ["7", "7", "1000", "7"])
    [1.0, 1.0, 1.0, 0.0]
    """
    pairs = zip(completions, answer, strict=True)
    return [float(gsm8k_strict_answer(c) == normalize_gsm8k(str(g))) for c, g in pairs]


@register_reward("gsm8k_flexible")
def gsm8k_flexible_reward(prompts, completions, answer, **_) -> list[float]:
    """1.0 when the completion's last number equals the reference after GSM8K normalisation.

    >>> gsm8k_flexible_reward(None, ["3 + 4 = 7", "so it is $1,000.", "7 or 8"], ["7", "1000", "7"])
    [1.0, 1.0, 0.0]
    """
    pairs = zip(completions, answer, strict=True)
    return [float(gsm8k_flexible_answer(c) == normalize_gsm8k(str(g))) for c, g in pairs]


def parse_number(text: str | None) -> float | None:
    """The last plain number in ``text`` (commas and ``$`` ignored), or None; never inf or NaN.

    >>> parse_number("about $1,250.5 in total"), parse_number("nan"), parse_number("1e999")
    (1250.5, None, None)
    """
    if text is None:
        return None
    found = _NUMBER.findall(text[-MAX_ANSWER_CHARS:].replace("$", ""))
    if not found:
        return None
    value = float(found[-1].replace(",", ""))  # float() of a long digit string is finite or inf, never slow
    return value if math.isfinite(value) else None


@register_reward("numeric_closeness")
def numeric_closeness_reward(prompts, completions, answer, answer_format: str = "xml", scale: float = 0.1, **_):
    """Partial credit falling with relative error: ``exp(-|a - g| / (scale · max(|g|, 1)))``.

    ``a`` is the last number of the extracted answer, ``g`` the reference's. With the default scale 0.1 and
    reference 72: 72 scores 1.0, 73 scores exp(-1/7.2) = 0.870, 1072 scores exp(-138.9) ≈ 0; no number
    scores 0. Non-numeric references give None (not applicable).

    >>> scores = numeric_closeness_reward(None, ["<answer>72</answer>", "<answer>73</answer>", "x"], ["72"] * 3)
    >>> [round(s, 3) for s in scores]
    [1.0, 0.87, 0.0]
    """
    scores: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        target = parse_number(str(gold))
        value = parse_number(extract_answer(completion, answer_format))
        if target is None:
            scores.append(None)
        elif value is None:
            scores.append(0.0)
        else:
            scores.append(math.exp(-abs(value - target) / (scale * max(abs(target), 1.0))))
    return scores


@register_reward("integer")
def integer_reward(prompts, completions, answer_format: str = "xml", **_) -> list[float]:
    """1.0 when the extracted answer is a bare integer (``,`` ``$`` and a trailing ``.`` allowed), else 0.0.

    >>> integer_reward(None, ["<answer>1,024</answer>", "<answer>-3.</answer>", "<answer>2.5</answer>", "7"])
    [1.0, 1.0, 0.0, 0.0]
    """
    scores = []
    for completion in completions:
        extracted = extract_answer(completion, answer_format)
        scores.append(float(extracted is not None and _INTEGER.fullmatch(normalize_gsm8k(extracted)) is not None))
    return scores
