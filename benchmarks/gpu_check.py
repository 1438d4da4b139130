"""The GPU check, one command on one CUDA device (`make gpu-check`; its first run, on an H200 on 2026-12-04, took
7 minutes with every thinktune row failing early: see the README's "On a GPU"):

1. the GPU tests (`pytest -m gpu`, as `make test-gpu`);
2. bfloat16 GRPO steps on a random-weight Llama-3.2-1B (recipes/models/llama-3.2-1b.json, the packaged tokenizer's
   files; neither the hub nor the packaged SmolLM2's weights) with each memory saver: LoRA plain, + gradient
   checkpointing, + adamw_8bit, nf4 (QLoRA), full fine-tuning + adamw_8bit + checkpointing. Each configuration's
   peak (torch.cuda.max_memory_allocated) goes beside `thinktune plan`'s and `thinktune memory`'s figures;
3. TRL's GRPOTrainer at the same settings (LoRA, its gradient checkpointing, generating with transformers), in the
   same run (needs `trl`: `pip install -e '.[bench]'`, or its wheel where the device has no index).

(2) and (3) are benchmarks/memory_savers.py with --device cuda; its table is appended to
benchmarks/MEMORY_SAVERS.md. This program writes benchmarks/GPU_CHECK.json: the device, the versions, each part's
outcome and seconds, and the rows. Without a CUDA device it says so and exits 2.

    python benchmarks/gpu_check.py [--steps 2] [--max-new-tokens 256] [--skip-tests] [--rows FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = "plain,checkpointing,adamw_8bit,nf4,full + both,trl + checkpointing"
GPU_TESTS = "tests/test_gpu.py"


def timed(command: list[str]) -> dict:
    """Run ``command`` in the repository, its output passed through; its exit status and seconds."""
    began = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT)
    shown = " ".join(["python", *command[1:]])  # the interpreter's path is this machine's, not the result's
    return {"command": shown, "returncode": done.returncode, "seconds": time.perf_counter() - began}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--configs", default=CONFIGS)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--rows", help="keep the rows, as they finish, in this JSON Lines file (default: temporary)")
    args = parser.parse_args()
    import torch
    import transformers

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False); nothing measured")
        return 2
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "parts": {},
    }
    if not args.skip_tests:
        # only the file that holds them: collecting the whole suite would import every optional library
        result["parts"]["gpu tests"] = timed([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu", GPU_TESTS])
    with tempfile.TemporaryDirectory() as scratch:
        rows = Path(args.rows) if args.rows else Path(scratch) / "rows.jsonl"
        result["parts"]["memory savers and TRL"] = timed(
            [
                sys.executable,
                "benchmarks/memory_savers.py",
                "--model",
                "llama-3.2-1b",
                "--device",
                "cuda",
                "--dtype",
                "bfloat16",
                "--plan",
                "--steps",
                str(args.steps),
                "--max-new-tokens",
                str(args.max_new_tokens),
                "--configs",
                args.configs,
                "--rows",
                str(rows),
            ]  # fmt: skip
        )
        result["rows"] = [json.loads(line) for line in rows.read_text().splitlines()] if rows.is_file() else []
    out = ROOT / "benchmarks" / "GPU_CHECK.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"gpu-check: {out}")
    return max(part["returncode"] for part in result["parts"].values())


if __name__ == "__main__":
    sys.exit(main())
