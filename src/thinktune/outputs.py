"""Where thinktune writes, and how it keeps what is already there: targets that are never destroyed unasked, one
process per run folder, and a failed write told in one line (paths are expanded by config.expand_path).

    refuse_existing(out, overwrite=False)           # a non-empty folder, a file or a run folder: RunError
    with RunLock(Path("runs/demo")):                # a second process on runs/demo is refused, naming this one
        with writing(Path("runs/demo/metrics.jsonl")):
            ...                                     # an OSError (full disk) becomes WriteError naming the file
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path


class RunError(RuntimeError):
    """A run folder or output path that cannot be used as asked, naming it."""


class WriteError(RunError):
    """A file or folder that could not be written (a full disk, a read-only folder, a file where a folder
    should be); what was saved before is intact."""

    def __init__(self, path: Path | str, err: OSError | Exception, note: str = ""):
        reason = getattr(err, "strerror", None) or (str(err).splitlines() or [type(err).__name__])[0][:160]
        super().__init__(f"cannot write {path} ({reason}){note}")


# A run folder holds one of these; no merge or export may replace it.
RUN_MARKERS = ("recipe.yaml", ".lock", "metrics.jsonl", "checkpoint", "final", "sft", "summary.json")


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_MARKERS)


def refuse_existing(path: Path, overwrite: bool, what: str = "output") -> None:
    """Stop before anything is written when ``path`` would destroy something: a run folder (always), or with
    ``overwrite`` false an existing file or a non-empty folder."""
    path = Path(path)
    if is_run_folder(path):
        raise RunError(f"{what} {path} is a run folder: writing there would replace the run; choose a new folder")
    if overwrite or not path.exists():
        return
    if path.is_dir() and not any(path.iterdir()):
        return
    kind = "folder is not empty" if path.is_dir() else "file exists"
    raise RunError(f"{what} {path}: the {kind}; choose another path or pass --overwrite to replace it")


@contextlib.contextmanager
def writing(path: Path | str):
    """Report an ``OSError`` inside the block as :class:`WriteError` naming ``path``."""
    try:
        yield
    except OSError as err:
        raise WriteError(path, err) from None


class RunLock:
    """An exclusive OS lock (``flock``) on ``<folder>/.lock`` for as long as it is held: released when the
    process ends however it ends (even SIGKILL), so a stale lock never blocks. The file names the holder (PID and
    command) for the process that is refused."""

    NAME = ".lock"

    def __init__(self, folder: Path):
        self.path = Path(folder) / self.NAME
        self._file = None

    def acquire(self) -> RunLock:
        if self._file is not None:
            return self
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(_record(handle))
            handle.close()
            raise RunError(
                f"run folder {self.path.parent} is in use by {holder}; wait for it to finish, or set "
                f"run.name=<new name>"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv)}) + "\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the lock
            self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _record(handle, seconds: float = 1.0) -> str:
    """The lock file's record, waiting up to ``seconds`` for it: the holder writes it just after it takes the lock,
    so a process refused in between would otherwise read an empty file."""
    deadline = time.monotonic() + seconds
    while True:
        handle.seek(0)
        text = handle.read()
        if text.endswith("\n") or time.monotonic() >= deadline:
            return text
        time.sleep(0.02)


def _holder(text: str) -> str:
    """``process 12 (thinktune train r.yaml)`` from the lock file's record.

    >>> _holder('{"pid": 12, "command": "thinktune train r.yaml"}')
    'process 12 (thinktune train r.yaml)'
    >>> _holder("")
    'another process'
    """
    try:
        record = json.loads(text)
        return f"process {record['pid']} ({record['command']})"
    except (ValueError, KeyError, TypeError):
        return "another process"
