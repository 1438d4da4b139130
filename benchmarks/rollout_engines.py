"""Rollout engines side by side: `python benchmarks/rollout_engines.py [--vllm-python PATH]` (``make bench`` runs it).

Runs ``benchmarks/vllm_cpu.py`` for the native engine and Hugging Face ``generate`` (this Python) and for vLLM with
merged weights and with its LoRA support (vLLM's environment, ``.venv-vllm``, which ``make test-vllm`` builds), each
in a process of its own and one after another, ``--rounds`` times (the order reversed every other round, so a drift
in the machine's speed falls on every engine alike), and writes the table to ``benchmarks/ROLLOUT_ENGINES.md``:
tokens/s per batch pooled over the rounds, the weight push before each batch, and the engine's start.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

from thinktune.environment import cpu_flags, cpu_name

HERE = Path(__file__).resolve().parent
BATCH = re.compile(r"^(\S+): .* (\d+) tokens in ([\d.]+) s = (\d+) tokens/s$")
PUSH = re.compile(r"^(\S+): weights pushed .* in ([\d.]+) s$")
START = re.compile(r"^(\S+): engine up in ([\d.]+) s$")
GAP = re.compile(r"^(\S+): log-prob gap to float32 ([\d.]+) \(mean\)$")


def measure(python: str, engine: str) -> dict:
    out = subprocess.run([python, str(HERE / "vllm_cpu.py"), "--engine", engine], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{engine} failed:\n{out.stderr[-2000:]}")
    lines = out.stdout.splitlines()
    rates = [int(m[4]) for line in lines if (m := BATCH.match(line))]
    pushes = [float(m[2]) for line in lines if (m := PUSH.match(line))]
    start = [float(m[2]) for line in lines if (m := START.match(line))]
    gaps = [float(m[2]) for line in lines if (m := GAP.match(line))]
    return {"rates": rates, "pushes": pushes, "start": start[0] if start else None, "gaps": gaps}


def cell(values: list[float], unit: str = "", digits: int = 0) -> str:
    return f"{min(values):.{digits}f}–{max(values):.{digits}f}{unit}" if values else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", default=str(HERE.parent / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--out", default=str(HERE / "ROLLOUT_ENGINES.md"))
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    names = {"native": "native (default)", "native-bf16": "native, `rollout.dtype: bfloat16`",
             "hf-generate": "Hugging Face `generate`", "vllm": "vLLM, weights merged",
             "vllm-lora": "vLLM, LoRA support"}  # fmt: skip
    runs = {engine: {"rates": [], "pushes": [], "start": [], "gaps": []} for engine in names}
    for round_ in range(args.rounds):
        for engine in list(names)[:: -1 if round_ % 2 else 1]:
            python = args.vllm_python if engine.startswith("vllm") else sys.executable
            for key, values in measure(python, engine).items():
                runs[engine][key] += values if isinstance(values, list) else [values] if values else []
    rows = [
        "# Rollout engines (`python benchmarks/rollout_engines.py`)",
        "",
        f"CPU: {cpu_name()} (bf16 flags: {', '.join(cpu_flags()) or 'none'}). SmolLM2-135M-Instruct with a LoRA "
        f"policy, float32; 4 prompts x 8 samples, temperature 0.7, up to 64 tokens; {args.rounds} rounds of 3 batches "
        "after a warm-up, each after a weight push as in training.",
        "",
        "| engine | tokens/s | median | weight push | engine start | log-prob gap to float32 |",
        "|---|---|---|---|---|---|",
    ]
    for engine, r in runs.items():
        start = cell(r["start"], " s", 1)
        rows.append(f"| {names[engine]} | {cell(r['rates'])} | {statistics.median(r['rates']):.0f} | "
                    f"{cell(r['pushes'], ' s', 2)} | {start} | {cell(r['gaps'], '', 4)} |")  # fmt: skip
    vllm, bf16, native, hf = (
        statistics.median(runs[e]["rates"]) for e in ("vllm", "native-bf16", "native", "hf-generate")
    )
    rows += ["", f"native bfloat16 against vLLM (merged), medians: {bf16 / vllm:.2f}x; against Hugging Face "
             f"`generate`: {bf16 / hf:.2f}x (native float32 {native / hf:.2f}x)"]  # fmt: skip
    Path(args.out).write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
