"""What each memory saver costs and saves a GRPO step: `python benchmarks/memory_savers.py [--model M] [--steps N]`.

Every configuration runs in a fresh process (peak RSS is a process's high-water mark) on the same recipe, seed and
prompts: LoRA plain, + gradient checkpointing, + the 8-bit optimizer, + the nf4 base (QLoRA), all three; full
fine-tuning plain, + the 8-bit optimizer, + both; TRL's GRPOTrainer with LoRA and its own gradient checkpointing
(`trl + checkpointing`, needs `pip install -e '.[bench]'`). The first step warms up and is not timed (with --steps 1
the one step is timed, cold). Plain and checkpointed runs sample the same first rollout, so their first update's loss
and gradient norm are compared too (they must agree to about 1e-6). With --plan, `thinktune plan` measures each
thinktune configuration's worst-case step too, in a process of its own, and its peak goes beside the run's.
Results go to benchmarks/MEMORY_SAVERS.md.

--model is smollm2 (the packaged SmolLM2-135M-Instruct) or a config in recipes/models/ (random weights, SmolLM2's
tokenizer), e.g. llama-3.2-1b. A random model writes random text, which the demo's rewards score 0 everywhere: there
the reward is the letter share of the text, so every completion has an advantage and every update is the full one
(as the plan's worst case)."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

CONFIGS = {
    "plain": [],
    "checkpointing": ["train.gradient_checkpointing=true"],
    "adamw_8bit": ["train.optimizer=adamw_8bit"],
    "nf4": ["model.quantize=nf4"],
    "all three": ["train.gradient_checkpointing=true", "train.optimizer=adamw_8bit", "model.quantize=nf4"],
    "tokens 768": ["grpo.micro_batch_tokens=768"],
    "tokens 512": ["grpo.micro_batch_tokens=512"],
    "tokens 256": ["grpo.micro_batch_tokens=256"],
    "checkpointing + tokens 512": ["train.gradient_checkpointing=true", "grpo.micro_batch_tokens=512"],
    "full fine-tuning": ["model.finetune=full"],
    "full + adamw_8bit": ["model.finetune=full", "train.optimizer=adamw_8bit"],
    "full + both": ["model.finetune=full", "train.optimizer=adamw_8bit", "train.gradient_checkpointing=true"],
    "trl + checkpointing": None,  # TRL's GRPOTrainer, LoRA, gradient_checkpointing=True
}
NO_EVALUATION = ["eval.before=false", "eval.after=false"]


def random_model(config_file: Path, folder: Path, dtype: str = "float32") -> str:
    """A randomly initialised model of the architecture in ``config_file``, with SmolLM2's tokenizer, its weights
    stored in ``dtype`` (bfloat16 as the hub's checkpoints are: loading it in bfloat16 then holds no float32 copy)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from thinktune.models import load_tokenizer, resolve_model

    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        config = AutoConfig.for_model(**json.loads(config_file.read_text()))
        AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).save_pretrained(folder)
        load_tokenizer(resolve_model("smollm2-135m-instruct")).save_pretrained(folder)
    return str(folder)


def model_and_case(name: str, model: str, steps: int, scratch: Path):
    """The model's path and the benchmark case (a random model gets the letter-share reward, see the doc)."""
    from workload import Case

    if model == "smollm2":
        return "smollm2-135m-instruct", Case(name.replace(" ", "_"), "smollm2-135m-instruct", "lora", steps)
    path = random_model(ROOT / "recipes/models" / f"{model}.json", scratch / model, DEVICE["dtype"])
    return path, Case(name.replace(" ", "_"), path, "lora", steps, reward="workload:letter_share")


# --device cuda: the model trains there in --dtype, and peaks are torch.cuda.max_memory_allocated
DEVICE = {"device": "cpu", "dtype": "float32"}


def overrides_of(name: str, path: str, new_tokens: int) -> tuple[str, ...]:
    on_device = (
        [f"model.device={DEVICE['device']}", f"model.dtype={DEVICE['dtype']}"] if DEVICE["device"] != "cpu" else []
    )
    return (f"model.name={path}", f"grpo.max_new_tokens={new_tokens}", *NO_EVALUATION, *on_device, *CONFIGS[name])


def peak_mb() -> float:
    """This process's peak memory: on CUDA the allocator's high-water mark, else the peak RSS (MiB)."""
    if DEVICE["device"] == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(name: str, model: str, steps: int, new_tokens: int, scratch: Path) -> dict:
    """``steps`` GRPO steps of the demo recipe under configuration ``name``; its numbers as a dict."""
    import torch
    from workload import build_trainer

    torch.manual_seed(0)
    path, case = model_and_case(name, model, steps, scratch)
    if CONFIGS[name] is None:
        return trl_worker(name, path, steps, new_tokens, scratch)
    runs = Path(tempfile.mkdtemp(prefix="memory-savers-"))  # scratch may be a kept --model-cache
    trainer = build_trainer(case, scratch, runs, overrides_of(name, path, new_tokens))
    records, seconds = [], []
    for step in range(steps):
        began = time.perf_counter()
        records.append(trainer.step(step))
        seconds.append(time.perf_counter() - began)
    timed = records[1:] or records
    return {
        "config": name,
        "peak_rss_mb": peak_mb(),
        "step_seconds": statistics.median(seconds[1:] or seconds),
        "update_seconds": statistics.median(r["seconds_update"] for r in timed),
        "first_loss": records[0]["loss"],
        "first_grad_norm": records[0]["grad_norm"],
    }


def trl_worker(
    name: str, path: str, steps: int, new_tokens: int, scratch: Path, group=8, prompts_per_step=4, checkpointing=True
) -> dict:
    """TRL's GRPOTrainer at the same settings: LoRA r 16 on every linear layer, ``prompts_per_step`` x ``group``
    completions per optimizer step, the demo's prompts (as chat text), the letter-share reward, its gradient
    checkpointing on unless told otherwise."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from workload import LEARNING_RATE, TEMPERATURE, letter_share

    from thinktune.data import PromptBuilder, load_examples
    from thinktune.models import load_tokenizer
    from thinktune.recipe import load_recipe

    r = load_recipe(ROOT / "recipes" / "demo.yaml", [f"model.name={path}", "data.train_size=200"])
    tokenizer = load_tokenizer(path)
    prompts = PromptBuilder.from_config(tokenizer, r.data)
    rows = [{"prompt": prompts.text(e.question)} for e in load_examples(r.data)[0][: prompts_per_step * steps]]
    seconds = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            seconds.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            seconds[-1] = time.perf_counter() - seconds[-1]

    config = GRPOConfig(
        output_dir=str(scratch / "trl"), per_device_train_batch_size=group, num_generations=group,
        gradient_accumulation_steps=prompts_per_step, max_completion_length=new_tokens, temperature=TEMPERATURE,
        learning_rate=LEARNING_RATE, beta=0.0, max_steps=steps, logging_steps=1, save_strategy="no", report_to=[],
        use_cpu=DEVICE["device"] == "cpu", shuffle_dataset=False, seed=0, disable_tqdm=True,
        gradient_checkpointing=checkpointing, model_init_kwargs={"dtype": DEVICE["dtype"]},
        bf16=DEVICE["dtype"] == "bfloat16",
    )  # fmt: skip
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=path, reward_funcs=letter_share, args=config, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, peft_config=lora, callbacks=[Timer()])  # fmt: skip
    trainer.train()
    return {
        "config": name,
        "peak_rss_mb": peak_mb(),
        "step_seconds": statistics.median(seconds[1:] or seconds),
        "update_seconds": float("nan"),  # TRL does not time its phases apart
        "first_loss": float("nan"),
        "first_grad_norm": float("nan"),
    }


def planned(name: str, model: str, new_tokens: int, scratch: Path) -> dict:
    """``thinktune plan``'s figures for configuration ``name``: its peak at the recipe's micro-batch, and its
    worst-case step."""
    from workload import recipe as benchmark_recipe

    from thinktune.config import ConfigError
    from thinktune.plan import measure

    path, case = model_and_case(name, model, 1, scratch)
    recipe = benchmark_recipe(case, path, scratch / "plan-runs", overrides=overrides_of(name, path, new_tokens))
    plan = measure(recipe)
    mb = 1000 / 1.048576  # MB (10^6 bytes) -> MiB, as peak RSS is counted
    row = {"estimate_mb": (plan.estimate_gb + plan.runtime_gb) * mb}
    try:
        size = plan.choose(recipe)
    except ConfigError as refused:  # over the budget: the plan stopped the step where it crossed it
        return {**row, "plan_refused": str(refused), "plan_peak_mb": plan.exceeded["gb"] * mb}
    return {**row, "plan_peak_mb": plan.peak_gb(size) * mb, "plan_step_seconds": plan.step_seconds(size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--configs", default=",".join(c for c in CONFIGS if CONFIGS[c] is not None))
    parser.add_argument("--plan", action="store_true", help="also measure each configuration with thinktune plan")
    parser.add_argument("--model-cache", help="keep the random-weight models in this folder (default: temporary)")
    parser.add_argument("--rows", help="JSON Lines file of finished rows: rerun with it to skip what is measured")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--save-model", metavar="FOLDER", help="only save the random-weight --model to FOLDER")
    parser.add_argument(
        "--dtype", default="float32", help="the random weights' dtype on disk (and on cuda, in training)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    DEVICE.update(device=args.device, dtype=args.dtype)
    if args.save_model:
        print(random_model(ROOT / "recipes/models" / f"{args.model}.json", Path(args.save_model), args.dtype))
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.steps, args.max_new_tokens, Path(args.scratch))))
        return
    done = {r["config"]: r for r in map(json.loads, Path(args.rows).read_text().splitlines())} if args.rows and \
        Path(args.rows).is_file() else {}  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        models = args.model_cache or scratch
        for name in args.configs.split(","):
            if name in done:  # measured by an earlier, interrupted run with the same --rows file
                rows.append(done[name])
                continue
            command = [sys.executable, __file__, "--worker", name, "--model", args.model, "--steps", str(args.steps),
                       "--max-new-tokens", str(args.max_new_tokens), "--scratch", models, "--device", args.device,
                       "--dtype", args.dtype]  # fmt: skip
            done_run = subprocess.run(command, capture_output=True, text=True)
            if done_run.returncode != 0:  # one configuration failing must not lose the others' rows
                print(f"{name}: failed (exit {done_run.returncode})\n{done_run.stderr[-3000:]}", flush=True)
                continue
            rows.append(json.loads(done_run.stdout.strip().splitlines()[-1]))
            if args.plan and CONFIGS[name] is not None:
                try:
                    rows[-1].update(planned(name, args.model, args.max_new_tokens, Path(models)))
                except Exception as failed:  # the run's own row still stands
                    print(f"{name}: the plan failed: {failed!r}", flush=True)
            print(rows[-1], flush=True)
            if args.rows:
                with open(args.rows, "a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
    write(rows, args)


def write(rows: list[dict], args) -> None:
    by = {r["config"]: r for r in rows}
    command = f"python benchmarks/memory_savers.py --model {args.model} --steps {args.steps} --max-new-tokens " \
              f"{args.max_new_tokens}" + (" --plan" if args.plan else "") + f" --configs '{args.configs}'" + \
              (f" --device {args.device} --dtype {args.dtype}" if args.device != "cpu" else "")  # fmt: skip
    lines = [
        f"## {args.model}, 4 prompts x 8 completions, up to {args.max_new_tokens} new tokens "
        f"({time.strftime('%Y-%m-%d')}; `{command}`)",
        "",
        f"| configuration (LoRA unless full) | {'peak allocated' if args.device == 'cuda' else 'peak RSS'} (MB) "
        "| step (s) | update (s) | plan: peak (MB) | plan / run "
        "| plan: worst-case step (s) | thinktune memory + runtime (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r.get("plan_peak_mb", 0) / r["peak_rss_mb"]
        if "plan_refused" in r:
            plan = f"over budget at {r['plan_peak_mb']:.0f} | > {ratio:.2f} | | {r['estimate_mb']:.0f}"
        elif "plan_peak_mb" in r:
            plan = f"{r['plan_peak_mb']:.0f} | {ratio:.2f} | {r['plan_step_seconds']:.1f} | {r['estimate_mb']:.0f}"
        else:
            plan = "| | |"
        lines.append(f"| {r['config']} | {r['peak_rss_mb']:.0f} | {r['step_seconds']:.1f} | {r['update_seconds']:.1f} "
                     f"| {plan} |")  # fmt: skip
    if "plain" in by and "checkpointing" in by:
        a, b = by["plain"], by["checkpointing"]
        loss_gap = abs(a["first_loss"] - b["first_loss"]) / max(abs(a["first_loss"]), 1e-12)
        norm_gap = abs(a["first_grad_norm"] - b["first_grad_norm"]) / max(a["first_grad_norm"], 1e-12)
        lines += ["", f"First update, plain against checkpointing: loss relative gap {loss_gap:.1e}, gradient-norm "
                  f"relative gap {norm_gap:.1e}."]  # fmt: skip
    results = ROOT / "benchmarks" / "MEMORY_SAVERS.md"
    old = results.read_text() if results.is_file() else "# Memory savers, measured\n"
    results.write_text(old.rstrip() + "\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
