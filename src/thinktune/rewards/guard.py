"""Run graders in a child process with a time bound per completion.

A completion can be anything a model writes, and some of it stalls a math parser: ``9^9^9^9`` makes sympy
try to build a number with more digits than atoms in the universe. math-verify's own bound uses
``signal.alarm``, which works only in the main thread and cannot interrupt a long C call. So graders that
parse model output run in a separate process: when one call takes longer than the bound, the process is
killed and restarted, the completion scores 0, and the time-out is counted (the trainer logs the count
per step as ``grader_timeouts``). A grader that raises scores 0 too, counted as ``grader_errors``. The process
starts without the environment's credentials, under memory and CPU limits, and is replaced whenever it dies. It
has a process group of its own and ignores SIGINT: a Ctrl-C in the terminal reaches the trainer alone, which
finishes the step it is on (its grading included) before it stops.

    >>> from thinktune.rewards.answers import math_equal
    >>> GRADER.call(math_equal, "0.5", "\\\\frac{1}{2}")
    True
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import resource
import signal
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any

from thinktune.rewards.bounded import POLL_SECONDS, StopRequested

STARTUP_SECONDS = 120.0  # importing sympy in a fresh process on a loaded 2-core machine
MEMORY_LIMIT = 4 << 30  # a grader that builds a giant number fails with MemoryError, not the machine
CPU_SECONDS = 3600  # CPU time of one grader process; it is replaced when it runs out
SECRET = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|CREDENTIAL|AUTH", re.IGNORECASE)


@contextlib.contextmanager
def _without_the_callers_script():
    """Start a process without re-running the caller's ``__main__``: the spawn method imports the main script in
    the child, and a script without an ``if __name__ == "__main__"`` guard would start training again there."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


@contextlib.contextmanager
def _without_secrets():
    """The environment without variables that look like credentials, while a grader process starts."""
    hidden = {name: os.environ.pop(name) for name in list(os.environ) if SECRET.search(name)}
    try:
        yield
    finally:
        os.environ.update(hidden)


@contextlib.contextmanager
def _sigint_blocked():
    """SIGINT held back in this thread while a child starts: the child inherits the mask, so a Ctrl-C in that
    window waits for the parent instead of reaching the child."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _serve(conn, preload: tuple[str, ...]) -> None:
    # The terminal's Ctrl-C is the trainer's to handle: in a process group of its own, ignoring SIGINT, the
    # grader finishes the call it is on, and the trainer stops it itself. (SIGINT was blocked while this process
    # started, so none slipped in before this line.)
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS + 10))
    for module in preload:
        __import__(module)
    conn.send("ready")
    while True:
        try:
            fn, args = conn.recv()
        except EOFError:  # the trainer is gone (it exited, or was killed): nothing left to serve, nothing to say
            return
        try:
            conn.send((True, fn(*args)))
        except BaseException as err:  # noqa: BLE001 - report every failure to the parent, keep serving
            conn.send((False, f"{type(err).__name__}: {err}"[:300]))


class BoundedCalls:
    """Calls ``fn(*args)`` in a child process, giving up after ``seconds``. ``fn`` must be importable."""

    def __init__(self, seconds: float = 5.0, preload: tuple[str, ...] = ("math_verify", "reasoning_gym")):
        self.seconds, self.preload = seconds, preload
        self.calls = 0
        self.timeouts = 0
        self.errors = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._process = self._conn = None
        self.stop = None  # set while a training step runs: a stop request abandons the call being waited for

    def call(self, fn: Callable, *args, default: Any = False) -> Any:
        """``fn(*args)`` from the child, or ``default`` when it times out, raises or kills the child; raises
        :class:`StopRequested` when a stop is requested meanwhile (the child is replaced)."""
        with self._lock:
            self._start()
            self.calls += 1
            try:
                self._conn.send((fn, args))
                if not self._answered():
                    self.timeouts += 1
                    self._stop()
                    return default
                ok, value = self._conn.recv()
            except (EOFError, OSError, BrokenPipeError) as err:  # the child died (e.g. out of memory)
                self.errors += 1
                self.last_error = f"grader process died: {type(err).__name__}"
                self._stop()
                return default
            if not ok:  # an exception leaves the process sound; replacing it would cost 1-2 s per failing call
                self.errors += 1
                self.last_error = value
                return default
            return value

    def _answered(self) -> bool:
        """Whether the child answers within ``seconds``, looking for a stop request every tenth of a second."""
        deadline = time.monotonic() + self.seconds
        while not self._conn.poll(min(POLL_SECONDS, max(0.0, deadline - time.monotonic()))):
            if self.stop is not None and self.stop.requested:
                self._stop()  # it may still be working on the call: its answer must never be read as the next's
                raise StopRequested("stopped while a grader ran")
            if time.monotonic() >= deadline:
                return False
        return True

    def counts(self) -> tuple[int, int, int]:
        """Calls, time-outs and errors so far."""
        return self.calls, self.timeouts, self.errors

    def _start(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        context = multiprocessing.get_context("spawn")  # no forked copy of torch's threads and memory
        parent, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, self.preload), daemon=True)
        with _without_secrets(), _without_the_callers_script(), _sigint_blocked():  # no credentials, no script
            self._process.start()
        child.close()
        self._conn = parent
        if not parent.poll(STARTUP_SECONDS) or parent.recv() != "ready":
            self._stop()
            raise RuntimeError(f"the grader process did not start within {STARTUP_SECONDS:.0f} s")

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None


GRADER = BoundedCalls()
