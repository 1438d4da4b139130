"""Statistics of evaluations: intervals, paired tests, and the sampled metrics pass@k, mean@k, maj@k."""

from __future__ import annotations

from collections import Counter
from math import comb


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion.

    >>> [round(v, 3) for v in wilson_interval(20, 200)]
    [0.066, 0.149]
    >>> wilson_interval(0, 40)[0]  # exactly 0, not a rounding residue printed as -0.000
    0.0
    """
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_sign_test(before: list[float], after: list[float]) -> dict[str, float]:
    """Exact two-sided sign test on paired 0/1 outcomes: how likely a gap this large is under no change.

    Counts problems fixed (0 → 1) and broken (1 → 0); ties carry no information.

    >>> paired_sign_test([0, 0, 0, 1], [1, 1, 1, 1])
    {'fixed': 3, 'broken': 0, 'p_value': 0.25}
    """
    fixed = sum(1 for b, a in zip(before, after, strict=True) if a > b)
    broken = sum(1 for b, a in zip(before, after, strict=True) if a < b)
    n, k = fixed + broken, min(fixed, broken)
    p = min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {"fixed": fixed, "broken": broken, "p_value": p}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of the chance that at least one of k samples is right, from n samples of which c are
    right (Chen et al. 2021): ``1 - C(n - c, k) / C(n, k)``.

    Worked example: 4 samples, 1 right. One draw is right with chance 1/4; two draws without replacement
    miss it with chance C(3,2)/C(4,2) = 3/6, so pass@2 = 0.5; four draws always include it.

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 2), pass_at_k(4, 1, 4), pass_at_k(4, 0, 4)
    (0.25, 0.5, 1.0, 0.0)
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(answers: list[str | None], correct: list[float]) -> float:
    """Whether the most common answer among the samples is right (maj@k); samples without an answer do not vote.

    Ties go to the answer seen first. Every sample with the same answer is graded alike, so the first one's
    grade is the answer's.

    >>> majority_correct(["4", "5", "4", None], [1.0, 0.0, 1.0, 0.0])
    1.0
    >>> majority_correct(["5", "4", "4", "5"], [0.0, 1.0, 1.0, 0.0])  # tie: the first answer, 5, wins
    0.0
    >>> majority_correct([None, None], [0.0, 0.0])
    0.0
    """
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == top)
    return float(correct[answers.index(winner)])


def sampled_metrics(correct_counts: list[int], majority: list[float], k: int) -> dict[str, float]:
    """Mean over problems of mean@k, pass@j (j = 1, 2, 4, … up to k, and k itself), maj@k, and the share of
    problems whose k samples were all wrong or all right (those give GRPO groups with nothing to learn).

    Worked example: three problems with 0, 2 and 4 of 4 samples right. pass@2 of the middle one is
    1 - C(2,2)/C(4,2) = 5/6, so pass@2 = (0 + 5/6 + 1) / 3.

    >>> m = sampled_metrics([0, 2, 4], [0.0, 1.0, 1.0], 4)
    >>> {key: round(value, 3) for key, value in m.items()}
    {'mean@4': 0.5, 'pass@2': 0.611, 'pass@4': 0.667, 'maj@4': 0.667, 'all_wrong@4': 0.333, 'all_right@4': 0.333}
    """
    n = max(len(correct_counts), 1)
    sizes = sorted({j for j in (2**i for i in range(k.bit_length())) if j <= k} | {k})
    metrics = {f"mean@{k}": sum(correct_counts) / k / n}
    for j in sizes[1:]:
        metrics[f"pass@{j}"] = sum(pass_at_k(k, c, j) for c in correct_counts) / n
    metrics[f"maj@{k}"] = sum(majority) / n
    metrics[f"all_wrong@{k}"] = sum(c == 0 for c in correct_counts) / n
    metrics[f"all_right@{k}"] = sum(c == k for c in correct_counts) / n
    return metrics
