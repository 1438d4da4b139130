"""A user's reward function, called with a time bound, and never allowed to end the run on its own.

thinktune's graders run in a separate process (rewards/guard.py) because they parse model output. A user's
function is another matter: it may be a lambda defined in a notebook, which no other process can import. So it
runs in a thread of this process, and the caller waits for it at most ``seconds``:

- past the bound the call is abandoned (a thread cannot be killed; it finishes, or not, on its own) and
  :class:`RewardTimeout` is raised for the caller to count;
- whatever the function raises comes back to the caller, ``SystemExit`` and ``KeyboardInterrupt`` included, as
  an exception naming the function, instead of ending the process;
- while it waits, the caller sees a stop request (Ctrl-C during training) within a tenth of a second and
  raises :class:`StopRequested`, however long the function would have taken.

    >>> call_bounded(lambda x: x + 1, (1,), {}, seconds=5.0, name="plus_one")
    2
    >>> import time
    >>> call_bounded(lambda: time.sleep(10), (), {}, seconds=0.2, name="sleepy")
    Traceback (most recent call last):
    thinktune.rewards.bounded.RewardTimeout: reward 'sleepy' did not return within 0.2 s
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

POLL_SECONDS = 0.1  # how often the wait looks for a stop request


class RewardTimeout(Exception):
    """A reward call abandoned at its time bound."""


class StopRequested(Exception):
    """A stop (Ctrl-C, SIGTERM) was requested while a reward function ran; the step it belongs to is dropped."""


class RewardRaised(Exception):
    """The reward function raised ``error`` (any exception, ``SystemExit`` and ``KeyboardInterrupt`` too)."""

    def __init__(self, error: BaseException):
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


def call_bounded(fn: Callable, args: tuple, kwargs: dict, seconds: float, name: str, stop=None):
    """``fn(*args, **kwargs)`` in a daemon thread, waited for at most ``seconds``; ``stop``: an object whose
    ``requested`` turns true on a stop request."""
    outcome: dict = {}
    finished = threading.Event()

    def run():
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - SystemExit and KeyboardInterrupt must not end the run either
            outcome["error"] = err
        finally:
            finished.set()

    threading.Thread(target=run, name=f"reward {name}", daemon=True).start()
    deadline = time.monotonic() + seconds
    while not finished.wait(min(POLL_SECONDS, max(0.0, deadline - time.monotonic()))):
        if stop is not None and stop.requested:
            raise StopRequested(f"stopped while reward {name!r} was running")
        if time.monotonic() >= deadline:
            raise RewardTimeout(f"reward {name!r} did not return within {seconds:g} s")
    if "error" in outcome:
        raise RewardRaised(outcome["error"])
    return outcome["value"]
