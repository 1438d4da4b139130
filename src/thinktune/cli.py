"""Command line: ``thinktune train|sft|pairs|reward-model|sweep|eval|demo|generate|chat|merge|export|memory|
plan|report|compare``."""

from __future__ import annotations

import errno
import json
import shlex
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import typer

from thinktune.config import ConfigError
from thinktune.recipe import load_recipe

# peft calls a transformers method that transformers 5 marks deprecated; nothing a user can act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

# A full disk or quota, a read-only or forbidden folder, a file where a folder should be: the user's to fix.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.ENOTDIR, errno.EISDIR, errno.EFBIG}

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Teach small language models to reason with GRPO.")


@app.callback()
def _every_command():
    """Teach small language models to reason with GRPO."""
    from thinktune.allocator import keep_freed_memory

    keep_freed_memory()


def user_errors() -> tuple[type[Exception], ...]:
    from thinktune.data import DataError
    from thinktune.models import ModelError
    from thinktune.report.run_data import ReportError
    from thinktune.rewards import RewardError
    from thinktune.run_dir import RunError
    from thinktune.training import NonFiniteError

    return (ConfigError, DataError, ModelError, NonFiniteError, ReportError, RewardError, RunError)


def _fail_cleanly(fn, *args, again: list[str] | None = None, **kwargs):
    """Run ``fn``; a user error prints one clear line and exits 2 instead of a traceback; a run stopped by
    Ctrl-C or SIGTERM after a checkpointed step prints the command that continues it (``again``, else this
    command line) and exits 130."""
    from thinktune.outputs import WriteError
    from thinktune.training import Interrupted

    try:
        return fn(*args, **kwargs)
    except (*user_errors(), OSError) as err:
        if isinstance(err, OSError):  # a write no site names (a library's own file)
            if err.errno not in WRITE_ERRNOS:
                raise
            err = WriteError(err.filename or "a file", err)
        message = f"error: {err}"
        if isinstance(err, WriteError) and again:
            message += f"; what was saved is intact, and {shlex.join(again)} continues from the last checkpoint"
        typer.secho(message, fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except Interrupted as stop:
        command = shlex.join(again or ["thinktune", *sys.argv[1:]])
        typer.secho(f"{stop}; continue with: {command}", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None


def demo_recipe_path() -> Path:
    """recipes/demo.yaml of the current folder, else of the checkout this package runs from."""
    for candidate in (Path("recipes/demo.yaml"), Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError("recipes/demo.yaml not found: run `thinktune demo` from the thinktune checkout")


def _run_stages(recipe: Path, overrides: list[str] | None, stage: str | None = None, resume=False, again=None):
    """Load ``recipe`` with ``overrides`` (``stage``: that stage alone) and run it through ``pipeline.train``.
    ``resume``: True, False, or a function of the loaded recipe that says whether to resume; ``again``: the
    command that continues a stopped run."""
    from thinktune.pipeline import train as run_train

    r = _fail_cleanly(load_recipe, recipe, [*(overrides or []), *([f"stages=[{stage}]"] if stage else [])])
    _fail_cleanly(run_train, r, resume=resume(r) if callable(resume) else resume, again=again)


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="YAML recipe."),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides, e.g. train.steps=20"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its last checkpoint."),
):
    """Train with GRPO: evaluate before, train, evaluate after, save the model.

    Example: thinktune train recipes/demo.yaml train.steps=20 run.name=short
    """
    _run_stages(
        recipe, overrides, resume=resume, again=["thinktune", "train", str(recipe), *(overrides or []), "--resume"]
    )


@app.command()
def sft(
    recipe: Path = typer.Argument(..., help="YAML recipe (its sft section)."),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides, e.g. sft.steps=50"),
):
    """Supervised fine-tuning on worked answers (loss on completion tokens only); saves <run>/sft for `train`.

    Example: thinktune sft recipes/math_sft_grpo.yaml sft.steps=50
    """
    _run_stages(recipe, overrides, "sft")


@app.command()
def pairs(
    recipe: Path = typer.Argument(..., help="YAML recipe (its data, sft.completion and pairs sections)."),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides, e.g. pairs.limit=200"),
):
    """Preference pairs: chosen = the dataset's reasoning + answer, rejected = the model's direct answer.
    A rerun continues after the last pair written.

    Example: thinktune pairs recipes/cot_reward_model.yaml pairs.limit=200
    """
    from thinktune.pairs import pairs_path

    _run_stages(recipe, overrides, "pairs", resume=lambda r: pairs_path(r).is_file())  # where pairs.out points


@app.command("reward-model")
def reward_model(
    recipe: Path = typer.Argument(..., help="YAML recipe (its model and reward_model sections)."),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides, e.g. reward_model.steps=50"),
):
    """Train a Bradley-Terry reward model on preference pairs; held-out pair accuracy before and after.

    Example: thinktune reward-model recipes/cot_reward_model.yaml reward_model.steps=50
    """
    _run_stages(recipe, overrides, "reward_model")


@app.command()
def sweep(
    recipe: Path = typer.Argument(..., help="YAML recipe with data.validation_size > 0."),
    grid: list[str] = typer.Argument(None, help="key=a,b,... values to compare, e.g. grpo.temperature=0.7,1.0"),
    seeds: str = typer.Option("0", "--seeds", help="Training seeds, comma-separated, e.g. 0,1,2."),
    name: str = typer.Option("sweep", "--name", help="Folder under run.output_dir for the runs and the table."),
    set_: list[str] = typer.Option(None, "--set", help="key=value applied to every variant, e.g. train.steps=20."),
    held_out: bool = typer.Option(
        False, "--held-out", help="The final measurement: the recipe as it is (no variants), on the held-out set."
    ),
):
    """Train every combination of values on the validation split (never the held-out set) and tabulate the
    gains with per-seed sign tests; finished runs are reused, so a stopped sweep continues. With --held-out,
    the chosen recipe once per seed on the held-out set.

    Example: thinktune sweep recipes/demo.yaml grpo.temperature=0.7,1.0 --seeds 0,1,2 --set train.steps=20
    """
    from thinktune.sweep import sweep as run_sweep

    def run():
        try:
            seed_list = [int(s) for s in seeds.split(",")]
        except ValueError:
            raise ConfigError(f"--seeds: expected comma-separated integers, got {seeds!r}") from None
        run_sweep(str(recipe), grid or [], seed_list, name, set_ or [], "held_out" if held_out else "validation")

    _fail_cleanly(run)


@app.command()
def demo(overrides: list[str] = typer.Argument(None, help="key.sub=value overrides")):
    """The offline demo: SmolLM2-135M-Instruct (packaged) learns a reasoning-gym task with LoRA.

    Example: thinktune demo train.steps=40
    """
    from thinktune.run_dir import stage_outputs

    path = _fail_cleanly(demo_recipe_path)
    run_dir = _fail_cleanly(load_recipe, path, overrides or []).run.path
    if (run_dir / "summary.json").is_file():
        typer.echo(f"the demo already finished in {run_dir} (delete that folder to run it again):\n")
        typer.echo((run_dir / "comparison.md").read_text() if (run_dir / "comparison.md").is_file() else "")
        return

    def resume(r) -> bool:  # killed at any point: carry on from what is there
        if stage_outputs(r):
            typer.echo(f"resuming the unfinished demo in {run_dir} (delete it to start over)")
        return bool(stage_outputs(r))

    _run_stages(path, overrides, resume=resume, again=["thinktune", "demo", *(overrides or [])])


@app.command("eval")
def eval_(
    model: str = typer.Argument(..., help="Model: folder (HF model or peft adapter), alias or hub id."),
    recipe: Path = typer.Option(None, "--recipe", "-r", help="Recipe giving data, format and rewards."),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides"),
    out: Path = typer.Option(None, "--out", help="Write metrics and completions to this JSON file."),
    reward_model: Path = typer.Option(
        None, "--reward-model", help="Also score completions with this reward model (reported as reward/reward_model)."
    ),
    samples: int = typer.Option(
        None, "--samples", help="Also k samples per problem at the recipe's temperature: pass@k, mean@k, maj@k."
    ),
):
    """Greedy evaluation on the recipe's held-out set: accuracy, format accuracy, mean reward (per function).

    Example: thinktune eval runs/demo/final --recipe recipes/demo.yaml --samples 8 --out eval.json
    """
    from thinktune import api

    def run():
        r = load_recipe(recipe, overrides or [])
        result = api.evaluate(model, r, samples=samples, reward_model=reward_model)
        json.dump(result.metrics, sys.stdout, indent=1)
        print()
        if out:
            out.write_text(json.dumps({"metrics": result.metrics, "samples": result.samples}, indent=1))

    _fail_cleanly(run)


@app.command()
def generate(
    model: str = typer.Argument(..., help="Model: folder (HF model or peft adapter), alias or hub id."),
    question: str = typer.Argument(..., help="The question to answer."),
    recipe: Path = typer.Option(None, "--recipe", "-r", help="Recipe whose prompt (system, few-shot) to use."),
    max_new_tokens: int = typer.Option(256),
):
    """Answer one question greedily, prompted as the recipe prompts (default recipe if none).

    Example: thinktune generate runs/demo/final "What is 17 + 25?" --recipe recipes/demo.yaml
    """
    from thinktune import api

    _fail_cleanly(lambda: print(api.generate(model, question, load_recipe(recipe), max_new_tokens)))


@app.command()
def chat(
    model: str = typer.Argument(..., help="Model: folder (HF model or peft adapter), alias or hub id."),
    recipe: Path = typer.Option(None, "--recipe", "-r", help="Recipe whose system prompt and format to use."),
    max_new_tokens: int = typer.Option(512, help="Longest reply, in tokens."),
    temperature: float = typer.Option(0.7, help="Sampling temperature; 0 = greedy."),
    seed: int = typer.Option(0, help="Seed of the sampling."),
):
    """Talk to a model in the terminal, replies streamed as they are generated; /reset starts over, /exit quits.

    Example: thinktune chat runs/demo/final --recipe recipes/demo.yaml
    """
    from thinktune import api, conversation

    def run():
        r = load_recipe(recipe) if recipe else None
        conversation.run(api.chat(model, r, max_new_tokens, temperature, seed))

    _fail_cleanly(run)


@app.command()
def merge(
    adapter: Path = typer.Argument(..., help="A LoRA adapter folder, e.g. runs/demo/final."),
    out: Path = typer.Argument(..., help="A new (or empty) folder to write the merged model to."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it already holds files."),
):
    """Fold a LoRA adapter into its base model: a plain Hugging Face folder (config, safetensors, tokenizer, chat
    template) that AutoModelForCausalLM loads without peft.

    Example: thinktune merge runs/demo/final merged/ && thinktune generate merged/ "What is 2 + 3?"
    """
    from thinktune.export import merge_adapter

    print(_fail_cleanly(merge_adapter, adapter, out, overwrite))


@app.command()
def export(
    model: str = typer.Argument(..., help="A trained adapter or model folder (or alias)."),
    gguf: Path = typer.Option(..., "--gguf", help="The GGUF file to write, e.g. demo.gguf."),
    type_: str = typer.Option("f16", "--type", help="Weights: f32, f16 or q8_0 (8-bit, about half of f16)."),
    recipe: Path = typer.Option(None, "--recipe", "-r", help="Recipe whose system prompt the Modelfile carries."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing GGUF file and Modelfile."),
):
    """Write a model (adapters merged in) as one GGUF file for llama.cpp and Ollama, tokenizer and chat template
    included, with an Ollama Modelfile beside it. Llama-family, Qwen2 and Qwen3 models.

    Example: thinktune export runs/demo/final --gguf out/demo.gguf --type q8_0 --recipe recipes/demo.yaml
    (then: ollama create demo -f out/Modelfile)
    """
    from thinktune.export import export_gguf

    print(_fail_cleanly(lambda: export_gguf(model, gguf, type_, load_recipe(recipe) if recipe else None, overwrite)))


@app.command()
def memory(
    recipe: Path = typer.Argument(..., help="YAML recipe."),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides, e.g. model.dtype=bfloat16"),
    config: Path = typer.Option(
        None, "--config", help="The model's config.json (architecture fields); default: the recipe model's own."
    ),
):
    """Estimate the device memory a recipe's GRPO step needs at its peak, part by part, from the model's
    architecture (arithmetic, an upper bound at full prompt and completion lengths; not a measurement).

    Example: thinktune memory recipes/math_format_accuracy.yaml model.dtype=bfloat16 grpo.prompts_per_step=16
    grpo.max_new_tokens=512 --config recipes/models/llama-3.2-1b.json
    """
    from thinktune.memory import Architecture, estimate

    def run():
        r = load_recipe(recipe, overrides or [])
        if config:
            try:
                arch = Architecture.of(SimpleNamespace(**json.loads(config.read_text())))
            except (OSError, ValueError, AttributeError, TypeError) as err:
                raise ConfigError(
                    f"--config {config}: not a model config with the architecture's fields ({err})"
                ) from None
        else:
            from transformers import AutoConfig

            from thinktune.models import resolve_model

            arch = Architecture.of(AutoConfig.from_pretrained(resolve_model(r.model.name)))
        for part, gb in estimate(r, arch).items():
            print(f"{part:<30} {gb:6.2f} GB")

    _fail_cleanly(run)


@app.command()
def plan(
    recipe: Path = typer.Argument(..., help="YAML recipe."),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides, e.g. run.memory_budget_gb=8"),
    repeats: int = typer.Option(
        1,
        min=1,
        help="Updates per micro-batch size; the time is the last one's (the "
        "first pays for touching memory the first time).",
    ),
):
    """Measure one worst-case GRPO step of a recipe in a separate process: the longest prompts, every completion at
    grpo.max_new_tokens, an update on all of them. Prints peak memory and time per phase, the micro-batch size
    that fits run.memory_budget_gb (else 90% of the device's free memory), the run's projected wall-clock and thinktune
    memory's estimate beside them; exits 2, naming what to change, when the step does not fit.

    Example: thinktune plan recipes/demo.yaml run.memory_budget_gb=4
    """
    from thinktune.plan import measure

    def run():
        r = load_recipe(recipe, overrides or [])
        measured = measure(r, repeats)
        print("\n".join(measured.lines(r)))
        measured.choose(r)

    _fail_cleanly(run)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run directory, e.g. runs/demo."),
    out: Path = typer.Option(None, "--out", "-o", help="Where to write the page (default RUN_DIR/report.html)."),
):
    """One self-contained HTML page on a run: curves, held-out results with their statistics, completions before
    and after, the recipe. Written at the end of every `train` too.

    Example: thinktune report runs/demo && open runs/demo/report.html
    """
    from thinktune.report import write_report

    print(_fail_cleanly(write_report, run_dir, out))


@app.command()
def compare(
    run_dirs: list[Path] = typer.Argument(..., help="Two or more run directories."),
    out: Path = typer.Option(Path("comparison.html"), "--out", "-o", help="Where to write the page."),
):
    """One HTML page with the runs' curves overlaid and their before/after tables side by side.

    Example: thinktune compare runs/demo_final/recipe/seed0 runs/demo_final/recipe/seed1 -o seeds.html
    """
    from thinktune.report import write_comparison

    print(_fail_cleanly(write_comparison, run_dirs, out))


if __name__ == "__main__":
    app()
