"""What each memory saver costs and saves a GRPO step: `python benchmarks/memory_savers.py [--model M] [--steps N]`.

Every configuration runs in a fresh process (peak RSS is a process's high-water mark) on the same recipe, seed and
prompts: LoRA plain, + gradient checkpointing, + the 8-bit optimizer, + the nf4 base (QLoRA), all three; full
fine-tuning plain, + the 8-bit optimizer, + both. The first step warms up and is not timed. Plain and checkpointed runs
sample the same first rollout, so their first update's loss and gradient norm are compared too (they must agree to
about 1e-6). Results go to benchmarks/MEMORY_SAVERS.md.

--model is smollm2 (the packaged SmolLM2-135M-Instruct) or a config in recipes/models/ (random weights, SmolLM2's
tokenizer), e.g. llama-3.2-1b."""

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
    "full fine-tuning": ["model.finetune=full"],
    "full + adamw_8bit": ["model.finetune=full", "train.optimizer=adamw_8bit"],
    "full + both": ["model.finetune=full", "train.optimizer=adamw_8bit", "train.gradient_checkpointing=true"],
}


def random_model(config_file: Path, folder: Path) -> str:
    """A randomly initialised model of the architecture in ``config_file``, with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from thinktune.models import load_tokenizer, resolve_model

    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        config = AutoConfig.for_model(**json.loads(config_file.read_text()))
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        load_tokenizer(resolve_model("smollm2-135m-instruct")).save_pretrained(folder)
    return str(folder)


def worker(name: str, model: str, steps: int, new_tokens: int, scratch: Path) -> dict:
    """``steps`` GRPO steps of the demo recipe under configuration ``name``; its numbers as a dict."""
    import torch
    from workload import Case, build_trainer

    torch.manual_seed(0)
    path = "smollm2-135m-instruct" if model == "smollm2" else random_model(ROOT / "recipes/models" / f"{model}.json",
                                                                           scratch / model)  # fmt: skip
    case = Case(name.replace(" ", "_"), path, "lora", steps)
    overrides = (f"model.name={path}", f"grpo.max_new_tokens={new_tokens}", *CONFIGS[name])
    trainer = build_trainer(case, scratch, scratch / "runs", overrides)
    records, seconds = [], []
    for step in range(steps):
        began = time.perf_counter()
        records.append(trainer.step(step))
        seconds.append(time.perf_counter() - began)
    timed = records[1:] or records
    return {
        "config": name,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "step_seconds": statistics.median(seconds[1:] or seconds),
        "update_seconds": statistics.median(r["seconds_update"] for r in timed),
        "first_loss": records[0]["loss"],
        "first_grad_norm": records[0]["grad_norm"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.steps, args.max_new_tokens, Path(args.scratch))))
        return
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.configs.split(","):
            command = [sys.executable, __file__, "--worker", name, "--model", args.model, "--steps", str(args.steps),
                       "--max-new-tokens", str(args.max_new_tokens), "--scratch", scratch]  # fmt: skip
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    write(rows, args)


def write(rows: list[dict], args) -> None:
    by = {r["config"]: r for r in rows}
    lines = [
        f"## {args.model}, 4 prompts x 8 completions, up to {args.max_new_tokens} new tokens "
        f"({time.strftime('%Y-%m-%d')}; `python benchmarks/memory_savers.py --model {args.model} --steps {args.steps} "
        f"--max-new-tokens {args.max_new_tokens}`)",
        "",
        "| configuration (LoRA unless full) | peak RSS (MB) | step (s) | update (s) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['config']} | {r['peak_rss_mb']:.0f} | {r['step_seconds']:.1f} | {r['update_seconds']:.1f} |"
              for r in rows]  # fmt: skip
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
