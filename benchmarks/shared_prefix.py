"""What prefilling a shared prompt prefix once saves: `python benchmarks/shared_prefix.py [--split validation]`.

The demo's greedy evaluation (SmolLM2-135M, float32, 300 problems, batches of 50; its prompts share 88 of 101
tokens: system prompt and worked example) timed twice in this process: every prompt prefilled whole (the shared
prefix's threshold set out of reach), then with the prefix run once per batch. Prints both times, model load
included, and whether the completions are the same.
"""

from __future__ import annotations

import argparse
import time

import thinktune
import thinktune.modeling as modeling
from thinktune.environment import cpu_name


def timed(recipe, min_shared: int):
    modeling.MIN_SHARED_POSITIONS = min_shared
    began = time.perf_counter()
    result = thinktune.evaluate("smollm2-135m-instruct", recipe)
    return time.perf_counter() - began, [s["completion"] for s in result.samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="validation", choices=["validation", "held_out"])
    args = parser.parse_args()
    recipe = thinktune.load_recipe("recipes/demo.yaml", [f"eval.split={args.split}"])
    default = modeling.MIN_SHARED_POSITIONS
    whole, whole_texts = timed(recipe, 10**9)
    shared, shared_texts = timed(recipe, default)
    same = sum(a == b for a, b in zip(whole_texts, shared_texts, strict=True))
    print(f"CPU: {cpu_name()}; demo evaluation, {args.split} split, {len(whole_texts)} problems")
    print(f"every prompt whole: {whole:.1f} s; shared prefix once: {shared:.1f} s ({whole / shared:.2f}x); "
          f"{same} of {len(whole_texts)} completions the same")  # fmt: skip


if __name__ == "__main__":
    main()
