"""TensorBoard, W&B (offline) and trackio get what metrics.jsonl gets, read back through each library's own
reader; a tracker that fails mid-run is dropped and training goes on; a missing library is one clear line."""

import json
import os
import struct
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp(prefix="trackio-"))  # before trackio is first imported
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"

from tests.helpers import read_lines, tiny_recipe  # noqa: E402
from thinktune.pipeline import train  # noqa: E402

STEPS = ["train.steps=4", "eval.every=2", "eval.after=true", "data.eval_size=4", "run.samples_per_step=1"]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("tracked")
    train(tiny_recipe(folder, tiny_model_dir, *STEPS, "run.report_to=[tensorboard, wandb, trackio]"))
    return folder / "tiny"


def logged(run: Path, key: str, stage: str = "metrics") -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in read_lines(run / f"{stage}.jsonl")]


def same_curve(read: list[tuple[int, float]], expected: list[tuple[int, float]]) -> bool:
    """The same steps, and the same values to float32 precision (TensorBoard stores float32)."""
    steps_match = [s for s, _ in read] == [s for s, _ in expected]
    return steps_match and [v for _, v in read] == pytest.approx([v for _, v in expected], rel=1e-6, abs=1e-7)


def test_tensorboard_has_every_metric_and_the_completions(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    for key in ("reward", "loss", "grad_norm", "completion_length"):
        assert same_curve([(e.step, e.value) for e in events.Scalars(f"grpo/{key}")], logged(tracked, key))
    read = [(e.step, e.value) for e in events.Scalars("eval/accuracy")]
    assert same_curve(read, logged(tracked, "accuracy", "eval_curve"))
    (text,) = [e for e in events.Tensors("grpo/completions/text_summary") if e.step == 4]
    table = text.tensor_proto.string_val[0].decode()
    assert table.startswith("| step | group | question | answer | completion | reward | advantage | length | truncated")
    assert len(table.splitlines()) == 2 + 8  # header, rule and the 8 completions of one group


def wandb_history(run_file: Path) -> list[dict]:
    """History records of a W&B run file. It is a LevelDB-style log of W&B's own protobuf records (32 KiB blocks,
    a 7-byte header per chunk); wandb 0.31 ships the record classes but no Python reader for the file."""
    from wandb.proto import wandb_internal_pb2

    data, position, pending, history = run_file.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk, position = data[position + 7 : position + 7 + length], position + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record.FromString(pending)
            if record.WhichOneof("record_type") == "history":
                items = record.history.item  # "a/b" keys come as nested keys ["a", "b"]
                history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    return history


def test_wandb_offline_run_has_every_metric_and_the_completions(tracked):
    (run_file,) = tracked.glob("wandb/offline-run-*/run-*.wandb")
    history = wandb_history(run_file)
    for key in ("reward", "loss"):
        read = [(h["step"], h[f"grpo/{key}"]) for h in history if f"grpo/{key}" in h]
        assert same_curve(read, logged(tracked, key))
    read = [(h["step"], h["eval/accuracy"]) for h in history if "eval/accuracy" in h]
    assert same_curve(read, logged(tracked, "accuracy", "eval_curve"))
    tables = [h for h in history if h.get("grpo/completions/_type") == "table-file"]
    assert [h["step"] for h in tables] == [1, 2, 3, 4]
    table = json.loads((run_file.parent / "files" / tables[-1]["grpo/completions/path"]).read_text())
    assert table["columns"][:5] == ["step", "group", "question", "answer", "completion"]
    assert len(table["data"]) == 8


def test_trackio_has_every_metric(tracked):
    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs("thinktune", "tiny")
    for key in ("reward", "loss"):
        read = [(r["step"], r[f"grpo/{key}"]) for r in logs if f"grpo/{key}" in r]
        assert same_curve(read, logged(tracked, key))
    read = [(r["step"], r["eval/accuracy"]) for r in logs if "eval/accuracy" in r]
    assert same_curve(read, logged(tracked, "accuracy", "eval_curve"))


def test_a_tracker_that_fails_mid_run_is_dropped_and_training_goes_on(tmp_path, tiny_model_dir, monkeypatch):
    from thinktune.external_trackers import TensorBoardTracker

    original = TensorBoardTracker.log

    def disk_full_at_step_3(self, step, metrics, stage="grpo"):
        if step == 3:
            raise OSError(28, "No space left on device")
        original(self, step, metrics, stage)

    monkeypatch.setattr(TensorBoardTracker, "log", disk_full_at_step_3)
    train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=5", "run.report_to=[tensorboard]"))
    assert [r["step"] for r in read_lines(tmp_path / "tiny" / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert (tmp_path / "tiny" / "final").is_dir()


def test_a_tracker_whose_library_is_missing_is_one_clear_error(tmp_path, tiny_model_dir, monkeypatch):
    import importlib.util

    from thinktune.external_trackers import MissingTracker

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(MissingTracker, match=r"run.report_to: wandb needs the wandb package.*thinktune\[wandb\]"):
        train(tiny_recipe(tmp_path, tiny_model_dir, "run.report_to=[wandb]"))
    assert not (tmp_path / "tiny" / "metrics.jsonl").exists()  # stopped before any step


def test_after_a_resume_wandb_and_trackio_show_every_step_once(tmp_path, tiny_model_dir, monkeypatch):
    from trackio.sqlite_storage import SQLiteStorage

    from thinktune.grpo.trainer import GRPOTrainer

    overrides = [*STEPS, "run.save_every=2", "run.report_to=[wandb, trackio]", "run.name=resumed"]
    original = GRPOTrainer.step

    def killed_in_step_4(self, step):
        if step == 3:  # steps 1-3 sent to every tracker, the checkpoint holds step 2
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(GRPOTrainer, "step", killed_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_recipe(tmp_path, tiny_model_dir, *overrides))
    monkeypatch.undo()
    train(tiny_recipe(tmp_path, tiny_model_dir, *overrides), resume=True)
    run = tmp_path / "resumed"

    (run_file,) = run.glob("wandb/offline-run-*/run-*.wandb")  # the crashed run's folder is gone
    history = wandb_history(run_file)
    read = [(h["step"], h["grpo/reward"]) for h in history if "grpo/reward" in h]
    assert [s for s, _ in read] == [1, 2, 3, 4] and same_curve(read, logged(run, "reward"))
    read = [(h["step"], h["eval/accuracy"]) for h in history if "eval/accuracy" in h]
    assert same_curve(read, logged(run, "accuracy", "eval_curve"))
    assert [h["step"] for h in history if h.get("grpo/completions/_type") == "table-file"] == [1, 2, 3, 4]

    logs = SQLiteStorage.get_logs("thinktune", "resumed")
    read = [(r["step"], r["grpo/reward"]) for r in logs if "grpo/reward" in r]
    assert [s for s, _ in read] == [1, 2, 3, 4] and same_curve(read, logged(run, "reward"))
    read = [(r["step"], r["eval/accuracy"]) for r in logs if "eval/accuracy" in r]
    assert same_curve(read, logged(run, "accuracy", "eval_curve"))
