"""Trackers: where a run's numbers go while it trains.

Every stage logs through one interface, so a sink is one class and a name in ``run.report_to``: ``jsonl`` (the
run directory's own record, always kept) here, ``tensorboard``, ``wandb`` and ``trackio`` in
:mod:`thinktune.external_trackers`.

    tracker = make_tracker(["jsonl"], run)
    tracker.log(3, {"reward": 0.5, "loss": 0.1})            # GRPO step 3 -> metrics.jsonl
    tracker.log(3, {"loss": 1.2}, stage="sft")              # -> sft_metrics.jsonl
    tracker.log(25, {"label": "step25", "accuracy": 0.4}, stage="eval")   # -> eval_curve.jsonl
    tracker.log_samples(3, [{"question": "…", "completion": "…", "reward": 1.0}])
    tracker.rewind(2)                                       # resuming after step 2: step 3 runs again
    tracker.close()
"""

from __future__ import annotations

from typing import Protocol

from thinktune.console import console
from thinktune.external_trackers import TensorBoardTracker, TrackioTracker, WandbTracker
from thinktune.jsonl import JsonlWriter, keep_records
from thinktune.registry import Registry
from thinktune.run_dir import RunDir


class Tracker(Protocol):
    def log(self, step: int, metrics: dict, stage: str = "grpo") -> None:
        """One record of ``stage`` (grpo, sft, reward_model, or eval: an evaluation during training)."""

    def log_samples(self, step: int, rows: list[dict]) -> None:
        """Completions of a GRPO step, one dict per completion."""

    def rewind(self, step: int, stage: str = "grpo") -> None:
        """``stage`` resumes after ``step``: forget what it logged for later steps (they run again)."""

    def close(self) -> None:
        """Flush and release whatever the sink holds."""


class JsonlTracker:
    """One JSON line per record, in the run directory: the files the rest of thinktune reads back."""

    FILES = {
        "grpo": "metrics.jsonl",
        "sft": "sft_metrics.jsonl",
        "reward_model": "reward_model_metrics.jsonl",
        "eval": "eval_curve.jsonl",
    }

    def __init__(self, run: RunDir):
        self.writers = {stage: JsonlWriter(run.file(name)) for stage, name in self.FILES.items()}
        self.samples = JsonlWriter(run.file("samples.jsonl"))

    def log(self, step: int, metrics: dict, stage: str = "grpo") -> None:
        self.writers[stage].write({"step": step, **metrics})

    def log_samples(self, step: int, rows: list[dict]) -> None:
        for row in rows:
            self.samples.write({"step": step, **row})

    def rewind(self, step: int, stage: str = "grpo") -> None:
        writers = (
            (self.writers["grpo"], self.writers["eval"], self.samples) if stage == "grpo" else [self.writers[stage]]
        )
        for writer in writers:  # the evaluation after training follows the last checkpoint: it always runs again
            keep_records(writer.path, lambda record: record["step"] <= step and record.get("label") != "after")

    def close(self) -> None:
        pass  # every line is written when it is logged


class Trackers:
    """Several trackers as one: each record goes to all of them. A tracker other than the JSONL record that
    fails (a full disk, a W&B error) is reported and dropped; training goes on, and the JSONL record stays
    complete. A failure of the JSONL record itself stops the run."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def log(self, step: int, metrics: dict, stage: str = "grpo") -> None:
        self._each("log", step, metrics, stage)

    def log_samples(self, step: int, rows: list[dict]) -> None:
        self._each("log_samples", step, rows)

    def rewind(self, step: int, stage: str = "grpo") -> None:
        self._each("rewind", step, stage)

    def close(self) -> None:
        self._each("close")

    def _each(self, method: str, *args) -> None:
        for tracker in list(self.trackers):
            if isinstance(tracker, JsonlTracker):
                getattr(tracker, method)(*args)
                continue
            try:
                getattr(tracker, method)(*args)
            except Exception as err:  # noqa: BLE001 - any sink's failure: report it, keep training
                console.print(
                    f"[yellow]tracker {type(tracker).__name__} failed in {method} ({type(err).__name__}: "
                    f"{str(err)[:160]}); dropped for the rest of the run, metrics.jsonl continues[/]"
                )
                self.trackers.remove(tracker)


TRACKERS = Registry(
    "run.report_to",
    {"jsonl": JsonlTracker, "tensorboard": TensorBoardTracker, "wandb": WandbTracker, "trackio": TrackioTracker},
)


def make_tracker(names: list[str], run: RunDir) -> Trackers:
    """The trackers ``run.report_to`` names, writing for ``run``; the JSONL record is always one of them."""
    return Trackers([TRACKERS.lookup(name)(run) for name in dict.fromkeys(["jsonl", *names])])
