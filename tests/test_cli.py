"""The command line reports bad input in one clear line (exit 2), without a traceback."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from thinktune.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "no-such-recipe.yaml"], "recipe file not found"),
        (["train", "recipes/demo.yaml", "grpo.group_size=0"], "grpo.group_size"),
        (["train", "recipes/demo.yaml", "model.name=./no/such/model", "eval.before=false"], "no such folder"),
        (["train", "recipes/demo.yaml", "data.task=nope", "run.output_dir=RUNS"], "unknown reasoning-gym task 'nope'"),
        (["merge", "RUNS", "RUNS/merged"], "is not a peft adapter folder"),
        (["export", "smollm2-135m-instruct", "--gguf", "RUNS/m.gguf", "--type", "q4"], "--type: 'q4' is not one of"),
        (["export", "smollm2-135m-instruct", "--gguf", "RUNS/m.bin"], "a GGUF file name ends in .gguf"),
        (["chat", "./no/such/model"], "no such folder"),
    ],
)
def test_bad_input_exits_2_with_a_message(args, message, tmp_path):
    args = [a.replace("RUNS", str(tmp_path)) for a in args]
    if args[0] == "train" and not any(a.startswith("run.output_dir") for a in args):
        args.append(f"run.output_dir={tmp_path}")
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_every_command_has_help_with_an_example():
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert {"train", "eval", "generate", "chat", "merge", "export", "report", "compare"} <= set(commands)
    for command in commands:
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Example: thinktune " in result.output, command


def test_export_of_a_model_whose_tokenizer_it_cannot_write_names_it_and_leaves_no_file(tmp_path, tiny_model_dir):
    result = runner.invoke(app, ["export", tiny_model_dir, "--gguf", str(tmp_path / "tiny.gguf")])
    assert result.exit_code == 2 and "writes BPE tokenizers; this one is WordLevel" in result.output
    assert not list(tmp_path.iterdir())


def test_eval_and_generate_on_a_saved_model(tmp_path, tiny_model_dir):
    import json

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"say {w}", "answer": "yes"}) for w in ["one", "two", "three"]))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"data: {{source: file, path: {data}, eval_size: 2}}\n"
        "rewards: [{name: 'tests.user_rewards:yes_fraction'}]\n"
        "grpo: {max_new_tokens: 4}\n"
    )
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", tiny_model_dir, "--recipe", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["metrics"]["n"] == 2 and len(saved["samples"]) == 2
    assert {"accuracy", "format_accuracy", "reward", "reward/tests.user_rewards:yes_fraction"} <= saved[
        "metrics"
    ].keys()
    result = runner.invoke(app, ["eval", tiny_model_dir, "--recipe", str(recipe), "--samples", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    sampled = json.loads(out.read_text())
    assert {"mean@4", "pass@2", "pass@4", "maj@4", "all_wrong@4", "all_right@4"} <= sampled["metrics"].keys()
    assert all("correct_of_4" in s for s in sampled["samples"])
    result = runner.invoke(
        app, ["generate", tiny_model_dir, "say yes", "--recipe", str(recipe), "--max-new-tokens", "3"]
    )
    assert result.exit_code == 0, result.output


def test_every_prompt_over_budget_is_a_clear_error(tmp_path, tiny_model_dir):
    import json

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"say one two three {i}", "answer": "yes"}) for i in range(4)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name: {tiny_model_dir}}}\ndata: {{source: file, path: {data}, eval_size: 1}}\n")
    result = runner.invoke(app, ["train", str(recipe), "data.max_prompt_tokens=3", f"run.output_dir={tmp_path}"])
    assert result.exit_code == 2, result.output
    assert "only 0 training prompts fit data.max_prompt_tokens=3 (3 skipped)" in result.output


def test_importing_thinktune_prints_no_warning_about_a_kernel_it_does_not_use():
    """peft imports bitsandbytes, whose import warns on a CPU with avx512_bf16 that it could not fetch a 4-bit kernel
    from the hub (where bitsandbytes is installed and the CPU has the flag; elsewhere there is nothing to warn)."""
    done = subprocess.run([sys.executable, "-c", "import thinktune, peft"], capture_output=True, text=True, check=True)
    assert "gemm_4bit_forward" not in done.stderr + done.stdout
