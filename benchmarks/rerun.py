"""Do two runs of one recipe agree to the bit? `python benchmarks/rerun.py [STEPS]` (default 6).

Trains `recipes/demo.yaml` (SmolLM2-135M, LoRA) for STEPS steps at the default thread count three times: twice
straight through, and once SIGKILLed in the middle of step STEPS - 1 and resumed from its last checkpoint. Prints,
for the second and the resumed run against the first, how many logged figures (timings aside) and how many
adapter tensors differ, and the largest difference. Takes about 4 minutes here for 6 steps.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def command(out: Path, name: str, steps: int) -> list[str]:
    return [
        sys.executable, "-m", "thinktune.cli", "train", str(ROOT / "recipes" / "demo.yaml"),
        f"train.steps={steps}", "run.save_every=1", "eval.before=false", "eval.after=false",
        "data.train_size=200", f"run.output_dir={out}", f"run.name={name}",
    ]  # fmt: skip


def figures(run: Path) -> list[dict]:
    """Every logged figure of every step except the timings."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("seconds") and not k.endswith("per_s")} for r in records]


def compare(first: Path, other: Path) -> str:
    a, b = figures(first), figures(other)
    steps_match = [r["step"] for r in a] == [r["step"] for r in b]
    differing = sum(x[k] != y.get(k) for x, y in zip(a, b, strict=False) for k in x)
    wa, wb = (load_file(run / "final" / "adapter_model.safetensors") for run in (first, other))
    tensors = sum(not torch.equal(wa[k], wb[k]) for k in wa)
    largest = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    return (
        f"steps logged {[r['step'] for r in b]} ({'same' if steps_match else 'DIFFERENT'}), "
        f"{differing} logged figures differ, {tensors}/{len(wa)} adapter tensors differ (largest {largest:.3g})"
    )


def main(steps: int = 6) -> None:
    with tempfile.TemporaryDirectory(prefix="thinktune-rerun-") as tmp:
        out = Path(tmp)
        for name in ("first", "second"):
            subprocess.run(command(out, name, steps), check=True, capture_output=True)
        killed = out / "killed"
        process = subprocess.Popen(command(out, "killed", steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metrics = killed / "metrics.jsonl"
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= steps - 2):
            time.sleep(0.05)
        time.sleep(1.0)  # into the next step's rollout
        process.send_signal(signal.SIGKILL)
        process.wait()
        logged = len(metrics.read_text().splitlines())
        subprocess.run([*command(out, "killed", steps), "--resume"], check=True, capture_output=True)
        print(f"threads: torch default ({torch.get_num_threads()}); {steps} steps of recipes/demo.yaml")
        print(f"second run vs first: {compare(out / 'first', out / 'second')}")
        print(f"killed after {logged} steps, resumed, vs first: {compare(out / 'first', killed)}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
