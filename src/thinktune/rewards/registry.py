"""Registry of reward functions, and :class:`RewardSet`: weighted, validated, per-function scores."""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from dataclasses import astuple, dataclass, field
from functools import partial
from typing import Any

import torch

from thinktune.config import RewardConfig
from thinktune.registry import Registry
from thinktune.rewards.bounded import RewardRaised, RewardTimeout, StopRequested, call_bounded
from thinktune.rewards.guard import GRADER

RewardFn = Callable[..., list]
FLOAT32_MAX = 3.4028234663852886e38  # rewards are summed and normalised in float32: larger ones become inf
REWARDS = Registry("rewards[].name")  # name -> reward function
NEEDS_SOURCE: dict[str, str] = {}  # reward name -> the data.source it cannot work without


class RewardError(RuntimeError):
    """A reward function that failed or returned something unusable, naming it and the first bad sample."""


def register_reward(name: str, needs_source: str | None = None):
    """Decorator: make a reward function available by ``name`` in recipes; ``needs_source``: the
    ``data.source`` it works with alone (a recipe with another is refused when it loads)."""

    def wrap(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        if needs_source:
            NEEDS_SOURCE[name] = needs_source
        return fn

    return wrap


def resolve_reward(name: str) -> RewardFn:
    """A registry name, or an import path ``pkg.module:function``."""
    if name in REWARDS:
        return REWARDS[name]
    if name.startswith("python:"):
        raise RewardError(
            f"rewards: {name!r} was a Python function given to thinktune.train in another process; give it again "
            "(thinktune.train(recipe, rewards=[...], resume=True)), or make it importable as 'pkg.module:function'"
        )
    if ":" not in name:
        raise RewardError(f"{REWARDS.unknown(name)}; or give 'pkg.module:function'")
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RewardError(f"rewards: cannot import module {module_name!r} for reward {name!r}: {err}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RewardError(f"rewards: {module_name!r} has no function {attr!r} (reward {name!r})")
    return fn


def is_builtin(fn: RewardFn) -> bool:
    """One of thinktune's own rewards (``rewards/``), as opposed to a user's function."""
    return (getattr(fn, "__module__", None) or "").startswith("thinktune.rewards.")


def _accepts(fn: RewardFn, keyword: str) -> bool:
    params = inspect.signature(fn).parameters
    return keyword in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


@dataclass
class Incidents:
    """What went wrong while scoring, counted: completions whose grading hit the grader's time bound or failed
    (scored 0), and calls of a user's reward function abandoned at ``rewards[].timeout`` (their batch scored None).

    >>> Incidents(1, 0, 2) + Incidents(0, 3, 0)
    Incidents(grader_timeouts=1, grader_errors=3, reward_timeouts=2)
    """

    grader_timeouts: int = 0
    grader_errors: int = 0
    reward_timeouts: int = 0

    def __add__(self, other: Incidents) -> Incidents:
        return Incidents(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


@dataclass
class RewardScores:
    """Per-function scores ``[functions, completions]`` (NaN = not applicable), their weighted sum, and the
    incidents of the scoring."""

    names: list[str]
    per_function: torch.Tensor
    total: torch.Tensor
    incidents: Incidents = field(default_factory=Incidents)

    @property
    def scorable(self) -> torch.Tensor:
        """Per completion: whether any function scored it (every one returning None leaves it unscorable)."""
        return ~self.per_function.isnan().all(0)


class RewardSet:
    """The recipe's rewards, called together and checked.

    ``context`` holds settings every built-in may want (e.g. ``answer_format``, ``task_dataset``); each is
    passed only to functions that accept that keyword and were not given it in ``args``.
    """

    def __init__(self, configs: list[RewardConfig], context: dict[str, Any] | None = None):
        self.names, self.weights, self.fns, self.bounds = [], [], [], []
        for cfg in configs:
            fn = resolve_reward(cfg.name)
            bound = dict(cfg.args)
            for key, value in (context or {}).items():
                if key not in bound and _accepts(fn, key):
                    bound[key] = value
            self.names.append(cfg.name)
            self.weights.append(cfg.weight)
            self.fns.append(partial(fn, **bound))
            # The built-ins are bounded where they parse (the grader process); a user's function as a whole.
            self.bounds.append(None if is_builtin(fn) else cfg.timeout)
        self.weight_tensor = torch.tensor(self.weights, dtype=torch.float32)
        self.stop = None  # set while a training step runs: a stop request abandons the reward being waited for

    def score(self, prompts: list[str], completions: list[str], columns: list[dict]) -> RewardScores:
        """Call every function on the batch; ``columns[i]`` is the dataset row of completion ``i``. A user's
        function past its ``timeout`` scores NaN (not applicable) for the batch and is counted. A batch whose every
        grader call, or every bounded call of a user's function, timed out or failed raises :class:`RewardError`:
        its rewards would all be 0 or None."""
        keys = columns[0].keys() if columns else ()
        batched = {k: [row[k] for row in columns] for k in keys}
        table = torch.full((len(self.fns), len(completions)), math.nan)
        graded_before = GRADER.counts()
        bounded_calls, timeouts = 0, []
        for f, (name, fn, seconds) in enumerate(zip(self.names, self.fns, self.bounds, strict=True)):
            try:
                if seconds is None:
                    values = fn(prompts, completions, **batched)
                else:
                    bounded_calls += 1
                    values = call_bounded(fn, (prompts, completions), batched, seconds, name, self.stop)
            except RewardTimeout as err:
                timeouts.append(str(err))
                continue
            except StopRequested:
                raise
            except Exception as err:
                cause = err.error if isinstance(err, RewardRaised) else err
                if isinstance(cause, StopRequested):  # from the grader, inside the user's function
                    raise cause from None
                raise RewardError(
                    f"reward {name!r} raised {type(cause).__name__}: {cause} "
                    f"(first completion of the batch: {completions[0][:200]!r})"
                ) from cause
            table[f] = torch.tensor(self._check(name, values, completions), dtype=torch.float32)
        weighted = table * self.weight_tensor[:, None]
        total = torch.nansum(weighted, dim=0)
        calls, grader_timeouts, grader_errors = (n - m for n, m in zip(GRADER.counts(), graded_before, strict=True))
        if calls and grader_timeouts + grader_errors == calls:
            raise RewardError(
                f"every one of the {calls} grader calls timed out or failed ({grader_timeouts} time-outs, "
                f"{grader_errors} errors; last error: {GRADER.last_error}): the rewards would all be 0"
            )
        if bounded_calls and len(timeouts) == bounded_calls:
            raise RewardError(
                f"every one of the {bounded_calls} calls of the reward functions timed out ({timeouts[-1]}); "
                "raise rewards[].timeout, or make the function faster"
            )
        return RewardScores(self.names, table, total, Incidents(grader_timeouts, grader_errors, len(timeouts)))

    @staticmethod
    def _check(name: str, values: Any, completions: list[str]) -> list[float]:
        if not isinstance(values, (list, tuple)):
            raise RewardError(f"reward {name!r} returned {type(values).__name__}, expected a list of floats")
        if len(values) != len(completions):
            raise RewardError(f"reward {name!r} returned {len(values)} values for {len(completions)} completions")
        clean = []
        for i, v in enumerate(values):
            if v is None:
                clean.append(math.nan)
                continue
            if not isinstance(v, (int, float)):  # bools count as 0/1
                if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
                    v = v.item()  # numpy / torch scalars
                else:
                    raise RewardError(
                        f"reward {name!r} returned a non-number {v!r} for completion {i}: {completions[i][:200]!r}"
                    )
            if not math.isfinite(v) or abs(v) > FLOAT32_MAX:
                hint = "return None for 'not applicable'" if not math.isfinite(v) else "beyond float32's range"
                raise RewardError(f"reward {name!r} returned {v} for completion {i}: {completions[i][:200]!r}; {hint}")
            clean.append(float(v))
        return clean
