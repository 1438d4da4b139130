"""How faithful thinktune's GGUF export is: `python benchmarks/gguf_export.py [MODEL] [--questions N]`.

Exports MODEL (default the packaged SmolLM2-135M-Instruct; an adapter folder works too) as f32, f16 and q8_0,
reads each file back with transformers' GGUF loader, and prints the file size, the export time, and how closely
the file follows the source (``thinktune.export.fidelity``: equal greedy answers, next-token agreement and
log-prob gap on the source's own answers) over N arithmetic and general questions.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from thinktune.export import QUANTIZATIONS, export_gguf, fidelity, merged_model

QUESTIONS = [
    "What is 12 + 30?", "Name a prime number above 10.", "Say hello in French.", "What is 7 times 8?",
    "Give a synonym of quick.", "What is the capital of Italy?", "What is 100 - 37?", "Spell 'cat' backwards.",
    "What colour is the sky on a clear day?", "What is 9 squared?", "Name a fruit that is yellow.",
    "How many days are in a week?", "What is half of 64?", "Write a word that rhymes with light.",
    "What is 15 + 27?", "Which is larger, 0.5 or 0.45?",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="smollm2-135m-instruct")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    source, tokenizer = merged_model(args.model)
    questions = QUESTIONS[: args.questions]
    print(f"{args.model}: {len(questions)} questions, {args.new_tokens} greedy tokens each")
    print("| type | size MB | export s | greedy answers equal | next-token agreement | log-prob gap |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for quantization in QUANTIZATIONS:
            path = Path(tmp) / quantization / "model.gguf"
            start = time.perf_counter()
            export_gguf(args.model, path, quantization)
            seconds = time.perf_counter() - start
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
            f = fidelity(model.eval(), source, tokenizer, questions, args.new_tokens)
            print(f"| {quantization} | {path.stat().st_size / 1e6:.0f} | {seconds:.1f} | {f['greedy_equal']:.0%} | "
                  f"{f['top1_agreement']:.1%} | {f['logprob_gap']:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
