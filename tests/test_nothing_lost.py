"""Nothing a user already has is destroyed, shared or reused stale: merge and export targets, one process per
run folder, evaluations made otherwise, a refused resume, a finished run resumed, a damaged adapter, paths."""

import json
import os
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.helpers import save_tiny_adapter, tiny_recipe
from thinktune.cli import app
from thinktune.models import ModelError, load_for_inference
from thinktune.outputs import RunError, RunLock
from thinktune.pipeline import train

runner = CliRunner()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model_dir):
    return save_tiny_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "final")


def test_merge_never_replaces_a_non_empty_folder_unasked_nor_a_run_folder(tmp_path, adapter):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("x")
    result = runner.invoke(app, ["merge", str(adapter), str(out)])
    assert result.exit_code == 2 and "the folder is not empty" in result.output and "--overwrite" in result.output
    assert (out / "notes.txt").read_text() == "x"

    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("{}")
    result = runner.invoke(app, ["merge", str(adapter), str(run), "--overwrite"])  # never, even when asked
    assert result.exit_code == 2 and "is a run folder" in result.output
    assert os.listdir(run) == ["recipe.yaml"]

    (tmp_path / "empty").mkdir()
    for target, extra in ((tmp_path / "empty", []), (out, ["--overwrite"])):
        result = runner.invoke(app, ["merge", str(adapter), str(target), *extra])
        assert result.exit_code == 0, result.output
        assert (target / "model.safetensors").is_file()
    assert not (out / "notes.txt").exists()  # replaced, as asked


def test_export_never_replaces_a_gguf_or_a_modelfile_unasked(tmp_path, tiny_model_dir):
    from thinktune.export import ExportError, export_gguf

    (tmp_path / "Modelfile").write_text("mine")
    with pytest.raises(RunError, match=r"Modelfile: the file exists; .*--overwrite"):
        export_gguf(tiny_model_dir, tmp_path / "m.gguf")
    assert (tmp_path / "Modelfile").read_text() == "mine" and not (tmp_path / "m.gguf").exists()
    (tmp_path / "n.gguf").write_text("mine")
    with pytest.raises(RunError, match=r"n.gguf: the file exists"):
        export_gguf(tiny_model_dir, tmp_path / "n.gguf", "f32")
    assert (tmp_path / "n.gguf").read_text() == "mine"
    with pytest.raises(ExportError, match="BPE tokenizers"):  # past the check: the tiny model's tokenizer is not BPE
        export_gguf(tiny_model_dir, tmp_path / "n.gguf", "f32", overwrite=True)


HOLD = """
import sys, time
from pathlib import Path
from thinktune.outputs import RunLock
lock = RunLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_run_folder_is_locked_while_a_process_holds_it_and_free_once_that_process_is_killed(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=rf"in use by process {holder.pid} \(-c {tmp_path}\)"):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)  # no chance to clean up: the OS drops the lock
        holder.wait()
    with RunLock(tmp_path):  # a stale lock file never blocks
        pass


def test_a_refused_resume_rewrites_nothing_and_a_finished_run_keeps_its_figures(tmp_path, tiny_model_dir):
    train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=3"))
    run = tmp_path / "tiny"
    recipe_yaml, summary = (run / "recipe.yaml").read_text(), json.loads((run / "summary.json").read_text())
    with pytest.raises(RunError, match=r"train.learning_rate: 0.003 -> 0.5"):
        train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=3", "train.learning_rate=0.5"), resume=True)
    assert (run / "recipe.yaml").read_text() == recipe_yaml

    train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=3"), resume=True)  # finished: nothing to train
    again = json.loads((run / "summary.json").read_text())
    for key in ("median_step_seconds", "flat_group_rate", "prompts_drawn_per_step", "seconds"):
        assert again[key] == summary[key] and again[key] is not None, key


def test_an_evaluation_made_otherwise_is_made_again(tmp_path, tiny_model_dir, capsys):
    with_eval = ["train.steps=1", "eval.before=true", "eval.after=true"]
    train(tiny_recipe(tmp_path, tiny_model_dir, *with_eval))
    run = tmp_path / "tiny"
    for name in ("metrics.jsonl", "checkpoint", "final", "summary.json"):  # as a run that died in step 1 leaves it
        subprocess.run(["rm", "-r", str(run / name)], check=True)
    capsys.readouterr()
    summary = train(tiny_recipe(tmp_path, tiny_model_dir, *with_eval, "data.eval_size=2"))
    assert "eval_before.json was made with another model, data or evaluation settings" in capsys.readouterr().err
    assert len(json.loads((run / "eval_before.json").read_text())["samples"]) == 2
    assert summary["before"]["accuracy"] is not None and "on 2 held-out problems" in (run / "comparison.md").read_text()


def test_a_damaged_adapter_is_one_line_naming_it(tmp_path, adapter):
    damaged = tmp_path / "damaged"
    subprocess.run(["cp", "-r", str(adapter), str(damaged)], check=True)
    weights = damaged / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelError, match=r"damaged.*cannot be read.*the file is damaged"):
        load_for_inference(str(damaged), "cpu")


def test_an_output_dir_that_is_a_file_is_one_line(tmp_path, tiny_model_dir):
    from thinktune.recipe import dump_recipe

    (tmp_path / "afile").write_text("x")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(dump_recipe(tiny_recipe(tmp_path, tiny_model_dir, f"run.output_dir={tmp_path / 'afile'}")))
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 2 and result.exception.__class__ is SystemExit
    assert "cannot write" in result.output and "afile" in result.output and "Not a directory" in result.output


def test_paths_expand_home_and_variables(monkeypatch):
    from thinktune.recipe import load_recipe

    monkeypatch.setenv("HOME", "/home/someone")
    monkeypatch.setenv("DATA", "/data")
    recipe = load_recipe(None, ["run.output_dir=~/x", "data.source=file", "data.path=$DATA/d.jsonl", "data.task=null"])
    assert (recipe.run.output_dir, recipe.data.path) == ("/home/someone/x", "/data/d.jsonl")
