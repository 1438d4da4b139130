"""Sampled-evaluation statistics against brute force and hand-computed cases."""

import itertools
from math import comb

import pytest

from thinktune.stats import majority_correct, pass_at_k, sampled_metrics


@pytest.mark.parametrize("n,c", [(8, 0), (8, 1), (8, 3), (8, 8), (5, 2)])
def test_pass_at_k_is_the_share_of_k_subsets_holding_a_right_sample(n, c):
    samples = [1] * c + [0] * (n - c)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(samples, k))
        brute = sum(any(s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(brute)
        assert len(subsets) == comb(n, k)


def test_pass_at_1_is_the_mean_and_bad_arguments_are_refused():
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)
    with pytest.raises(ValueError, match="n=4, c=5"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="k=0"):
        pass_at_k(4, 1, 0)


def test_majority_vote_counts_answers_not_samples():
    # "7" twice (wrong) beats "8" once (right); unanswered samples do not vote.
    assert majority_correct(["7", None, "8", "7", None, None], [0, 0, 1, 0, 0, 0]) == 0.0
    assert majority_correct([None, "8", None], [0, 1, 0]) == 1.0


def test_sampled_metrics_by_hand():
    # Two problems, 8 samples: 2 right / 8 right. pass@2 of the first: 1 - C(6,2)/C(8,2) = 1 - 15/28.
    m = sampled_metrics([2, 8], [0.0, 1.0], 8)
    assert m["mean@8"] == pytest.approx((2 / 8 + 1) / 2)
    assert m["pass@2"] == pytest.approx((1 - 15 / 28 + 1) / 2)
    assert m["pass@4"] == pytest.approx((1 - comb(6, 4) / comb(8, 4) + 1) / 2)
    assert m["pass@8"] == 1.0
    assert m["maj@8"] == 0.5
    assert (m["all_wrong@8"], m["all_right@8"]) == (0.0, 0.5)
    assert set(sampled_metrics([1], [1.0], 3)) == {"mean@3", "pass@2", "pass@3", "maj@3", "all_wrong@3", "all_right@3"}
