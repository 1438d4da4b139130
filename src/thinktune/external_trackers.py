"""Trackers that watch a run live, each through its own library (optional extras): TensorBoard, Weights & Biases,
trackio. They get the same records as ``metrics.jsonl`` (every numeric field, named ``<stage>/<field>``, e.g.
``grpo/reward``, ``eval/accuracy``, ``sft/loss``) and a table of each step's logged completions.

Watching: ``tensorboard --logdir runs/<name>/tensorboard``, ``trackio show --project thinktune``, and for W&B
``wandb sync runs/<name>/wandb/offline-run-*`` when not logged in (runs are offline then) or the W&B page when
logged in.
"""

from __future__ import annotations

import importlib.util
import itertools
import netrc
import os
import shutil

from thinktune.console import console
from thinktune.run_dir import RunDir, RunError

COMPLETION_COLUMNS = ("step", "group", "question", "answer", "completion", "reward", "advantage", "length", "truncated")


class MissingTracker(RunError):
    """A tracker named in ``run.report_to`` whose library is not installed."""


def require(package: str, tracker: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise MissingTracker(
            f"run.report_to: {tracker} needs the {package} package, which is not installed: "
            f"pip install 'thinktune[{tracker}]' (or drop {tracker} from run.report_to)"
        )


def scalars(metrics: dict, stage: str) -> dict[str, float]:
    """The numeric fields of a record, named ``stage/field`` (text fields such as an evaluation's label dropped).

    >>> scalars({"label": "step25", "accuracy": 0.5, "n": 300, "done": True}, "eval")
    {'eval/accuracy': 0.5, 'eval/n': 300}
    """
    return {
        f"{stage}/{key}": value
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def completions_table(step: int, rows: list[dict]) -> tuple[list[str], list[list]]:
    """A step's completions as (columns, data): the fixed columns, then each reward function's score.

    >>> completions_table(3, [{"group": 0, "completion": "yes", "reward/format": 1.0}])[1][0][:5]
    [3, 0, None, None, 'yes']
    """
    rewards = [key for key in rows[0] if key.startswith("reward/")] if rows else []
    columns = [*COMPLETION_COLUMNS, *rewards]
    return columns, [[{"step": step, **row}.get(c) for c in columns] for row in rows]


class TensorBoardTracker:
    """``runs/<name>/tensorboard``: scalars, and each step's completions as a Markdown table (TensorBoard's text
    plugin). On resume, events from the replayed steps on are purged, so every step appears once."""

    def __init__(self, run: RunDir):
        require("tensorboard", "tensorboard")
        self.folder = run.file("tensorboard")
        self.purge_from: int | None = None
        self._writer = None

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.folder), purge_step=self.purge_from)
        return self._writer

    def log(self, step: int, metrics: dict, stage: str = "grpo") -> None:
        for name, value in scalars(metrics, stage).items():
            self.writer.add_scalar(name, value, step)

    def log_samples(self, step: int, rows: list[dict]) -> None:
        if not rows:
            return
        columns, data = completions_table(step, rows)
        cell = lambda v: "" if v is None else str(v).replace("|", "\\|").replace("\n", "<br>")  # noqa: E731
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell(v) for v in values) + " |" for values in data]
        self.writer.add_text("grpo/completions", "\n".join(lines), step)

    def rewind(self, step: int, stage: str = "grpo") -> None:
        if stage == "grpo" and self._writer is None:
            self.purge_from = step + 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def wandb_logged_in() -> bool:
    """An API key in the environment or in ~/.netrc: then runs go to the W&B server, otherwise stay offline."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class Replaying:
    """A tracker whose library cannot take back what it was sent (W&B, trackio). On resume, the run there is
    rebuilt instead: at :meth:`rewind`, after the run directory's own record (the JSONL files) was rewound to the
    checkpoint, the library's run is started anew (:meth:`start`) and that record is sent to it again, so every
    step appears there once, as in ``metrics.jsonl``. A fresh run starts the library's run at its first record."""

    def __init__(self, run: RunDir):
        self.run_dir, self.run = run, None

    def rewind(self, step: int, stage: str = "grpo") -> None:
        if self.run is not None:  # a later stage of this process: it logged nothing before its rewind
            return
        self.run = self.start(rebuild=True)
        for logged_step, kind, record in recorded(self.run_dir):
            if kind == "samples":
                self.send(logged_step, {"grpo/completions": self.table(*completions_table(logged_step, record))})
            else:
                self.send(logged_step, scalars(record, kind))

    def log(self, step: int, metrics: dict, stage: str = "grpo") -> None:
        self.started().send(step, scalars(metrics, stage))

    def log_samples(self, step: int, rows: list[dict]) -> None:
        if rows:
            self.started().send(step, {"grpo/completions": self.table(*completions_table(step, rows))})

    def started(self):
        if self.run is None:
            self.run = self.start(rebuild=False)
        return self

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()


def recorded(run: RunDir):
    """``(step, stage, record)`` for every record of the run directory's JSONL files, stage by stage; a GRPO
    step's completions come as ``(step, "samples", rows)``."""
    from thinktune.jsonl import read_jsonl
    from thinktune.tracking import JsonlTracker

    for stage, name in JsonlTracker.FILES.items():
        for record in read_jsonl(run.file(name)):
            yield record["step"], stage, {k: v for k, v in record.items() if k != "step"}
    rows = read_jsonl(run.file("samples.jsonl"))
    for step, group in itertools.groupby(rows, key=lambda row: row["step"]):
        yield step, "samples", [{k: v for k, v in row.items() if k != "step"} for row in group]


class WandbTracker(Replaying):
    """A W&B run named after the run directory, offline unless logged in (``WANDB_MODE`` decides when set), its
    files in ``runs/<name>/wandb``. Every record carries ``step`` as its x-axis, so evaluations and SFT steps can
    be logged out of W&B's own step order. A resumed run is a new W&B run holding the whole record once (see
    :class:`Replaying`); offline, the old run's folder is removed, so ``wandb sync`` sends only the new one."""

    def __init__(self, run: RunDir):
        require("wandb", "wandb")
        import wandb

        super().__init__(run)
        self.wandb = wandb
        self.mode = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")

    def start(self, rebuild: bool):
        run = self.run_dir
        if rebuild:
            old = _wandb_id(run)
            for folder in run.file("wandb").glob(f"offline-run-*-{old}"):
                shutil.rmtree(folder)
            run.file("wandb_run_id").unlink()
        started = self.wandb.init(
            project=os.environ.get("WANDB_PROJECT", "thinktune"),
            name=run.path.name,
            id=_wandb_id(run),
            dir=str(run.path),
            mode=self.mode,
            resume="allow",
            config=run.recipe.model_dump(mode="json"),
            reinit="create_new",
        )
        if rebuild and self.mode == "online":
            console.print(f"W&B: the resumed run is {started.id}, with every step once; run {old} stops at the crash")
        started.define_metric("step")
        started.define_metric("*", step_metric="step")
        return started

    def send(self, step: int, values: dict) -> None:
        self.run.log({"step": step, **values})

    def table(self, columns: list[str], data: list[list]):
        return self.wandb.Table(columns=columns, data=data)


def _wandb_id(run: RunDir) -> str:
    """A W&B run id stable across resumes of one run directory (kept in it)."""
    path = run.file("wandb_run_id")
    if not path.is_file():
        import secrets

        path.write_text(secrets.token_hex(8))
    return path.read_text().strip()


class TrackioTracker(Replaying):
    """A local trackio run (project ``thinktune``, named after the run directory; ``TRACKIO_DIR`` says where
    trackio keeps its database). A resumed run replaces the trackio run of that name with the whole record,
    each step once (see :class:`Replaying`)."""

    def __init__(self, run: RunDir):
        require("trackio", "trackio")
        import trackio

        super().__init__(run)
        self.trackio = trackio
        self.project = os.environ.get("TRACKIO_PROJECT", "thinktune")

    def start(self, rebuild: bool):
        if rebuild:
            from trackio.sqlite_storage import SQLiteStorage

            SQLiteStorage.delete_run(self.project, self.run_dir.path.name)
        return self.trackio.init(
            project=self.project,
            name=self.run_dir.path.name,
            config=self.run_dir.recipe.model_dump(mode="json"),
            resume="allow",
            embed=False,
            auto_log_cpu=False,
            auto_log_gpu=False,
        )

    def send(self, step: int, values: dict) -> None:
        self.run.log(values, step=step)

    def table(self, columns: list[str], data: list[list]):
        return self.trackio.Table(columns=columns, data=data)
