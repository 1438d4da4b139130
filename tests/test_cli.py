"""The command line reports bad input in one clear line (exit 2), without a traceback."""

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
