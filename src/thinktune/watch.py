"""Watching held-out evaluations during training: keep the best model, and raise the alarm when held-out accuracy
falls significantly while the training reward keeps rising (reward hacking, or a collapse the reward cannot see).

Each evaluation is compared with the one before it on the same problems: an exact paired sign test on the
per-problem outcomes, so a drop of a few problems out of 300 is not called a regression.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from thinktune.stats import paired_sign_test

OUTCOME = {"accuracy": "correct", "format_accuracy": "format"}  # 0/1 metrics and their per-problem field
ALPHA = 0.05


@dataclass
class Regression:
    """Held-out ``metric`` fell from ``before`` (at ``since``) to ``after`` (at ``step``) while the training reward
    rose from ``reward_before`` to ``reward_after`` (means over the steps since the evaluation before each)."""

    step: int
    since: int
    before: float
    after: float
    fixed: int
    broken: int
    p_value: float
    reward_before: float
    reward_after: float

    def fields(self) -> dict[str, float]:
        """Numeric fields for the evaluation's record (eval_curve.jsonl and the trackers)."""
        return {
            "regression_alarm": 1.0,
            "regression_since": self.since,
            "regression_fixed": self.fixed,
            "regression_broken": self.broken,
            "regression_p": self.p_value,
            "regression_reward_before": self.reward_before,
            "regression_reward_after": self.reward_after,
        }

    def message(self, metric: str) -> str:
        return (
            f"held-out {metric} fell from {self.before:.3f} at step {self.since} to {self.after:.3f} at step "
            f"{self.step} ({self.fixed} fixed, {self.broken} broken, sign test p = {self.p_value:.2g}) while the "
            f"training reward rose from {self.reward_before:.3f} to {self.reward_after:.3f}: reward hacking or "
            f"collapse"
        )


def regression(
    step: int, since: int, previous: dict, current: dict, rewards: dict[int, float], metric: str = "accuracy"
) -> Regression | None:
    """A significant drop of ``metric`` from the ``previous`` evaluation (at step ``since``) to ``current`` (at
    ``step``) while the mean training reward of the steps since ``since`` beat that of the steps before it.

    >>> was = {"metrics": {"accuracy": 0.8}, "samples": [{"correct": 1}] * 8}
    >>> now = {"metrics": {"accuracy": 0.0}, "samples": [{"correct": 0}] * 8}
    >>> rewards = {1: 0.2, 2: 0.2, 3: 0.9, 4: 0.9}
    >>> r = regression(4, 2, was, now, rewards)
    >>> r.broken, round(r.p_value, 4), r.reward_before, r.reward_after
    (8, 0.0078, 0.2, 0.9)
    >>> regression(4, 2, was, was, rewards) is None  # nothing fell
    True
    """
    key = OUTCOME.get(metric)
    if key is None or metric not in current["metrics"] or not previous.get("samples") or not current.get("samples"):
        return None  # no 0/1 outcomes to pair (a reward metric, or a task without reference answers)
    outcomes = [s.get(key) for s in previous["samples"]], [s.get(key) for s in current["samples"]]
    if len(outcomes[0]) != len(outcomes[1]) or None in outcomes[0] + outcomes[1]:
        return None  # not the same problems, or not graded
    test = paired_sign_test(*outcomes)
    if not (test["broken"] > test["fixed"] and test["p_value"] < ALPHA):
        return None
    interval = since - (step - since) if since > 0 else 0
    earlier = [r for s, r in rewards.items() if interval < s <= since] or [rewards[min(rewards)]]
    later = [r for s, r in rewards.items() if since < s <= step]
    if not later or statistics.fmean(later) <= statistics.fmean(earlier):
        return None
    return Regression(
        step,
        since,
        previous["metrics"][metric],
        current["metrics"][metric],
        test["fixed"],
        test["broken"],
        test["p_value"],
        statistics.fmean(earlier),
        statistics.fmean(later),
    )


def improves(value: float, best: dict | None) -> bool:
    """Whether an evaluation scoring ``value`` beats the best so far (ties keep the earlier, shorter-trained one).

    >>> improves(0.5, None), improves(0.5, {"value": 0.5}), improves(0.6, {"value": 0.5})
    (True, False, True)
    """
    return best is None or value > best["value"]


class EvaluationWatch:
    """The state of the watch over one GRPO stage: the evaluation before the next one, and the best so far.

    watch = EvaluationWatch("accuracy", best=run.read_json("best.json"))
    watch.previous = (0, before)                      # or watch.resume(...) after a crash
    alarm = watch.check(step, evaluation, rewards)    # a Regression or None; remembers the evaluation
    if watch.improved(step, evaluation): save best/
    """

    def __init__(self, metric: str, best: dict | None = None):
        self.metric = metric
        self.best = best
        self.previous: tuple[int, dict] | None = None

    def check(self, step: int, evaluation: dict, rewards: dict[int, float]) -> Regression | None:
        alarm = None
        if self.previous is not None and rewards:
            since, before = self.previous
            alarm = regression(step, since, before, evaluation, rewards, self.metric)
        self.previous = (step, evaluation)
        return alarm

    def improved(self, step: int, evaluation: dict) -> bool:
        """Whether this evaluation of a trained model (step > 0) is the best so far; if so it becomes the best."""
        value = evaluation["metrics"].get(self.metric)
        if step == 0 or value is None or not improves(value, self.best):
            return False
        self.best = {"step": step, "metric": self.metric, "value": value}
        return True
