"""thinktune against TRL's GRPOTrainer on this machine: `make bench` (or `python benchmarks/bench.py`).

Each (case, system) runs in a fresh process, alternating A/B/A/B, so slow drift (thermal, a neighbour)
hits both sides alike. The parent watches the whole machine's CPU while a worker runs: time that neither
the worker nor idle accounts for (another process, or the hypervisor's steal) is reported, and a run with
more than a fifth of a core of it is marked contended and left out of the medians. thinktune gets a row per
``--samplers`` entry: ``model`` (its default, sampling in float32 as it trains) and ``auto`` (``rollout.dtype:
auto``: bfloat16 sampling where this CPU runs it faster, the old log-probs still the float32 trainer's).
``--configs savers`` adds the memory savers' rows: thinktune with gradient checkpointing, the 8-bit optimizer and
update passes of at most 512 completion tokens (``-savers``) against TRL with its gradient checkpointing
(``-checkpointing``), each compared with its own kind.

Model-FLOPs utilisation counts the work the step needs, the same formula for both sides:
2 N FLOPs per token to generate (each prompt prefilled once, plus every generated token) and
(2 + 2) N (LoRA: forward + activation gradients) or (2 + 4) N (full: + weight gradients) per token to train,
with N the matmul parameters; against the bf16 and fp32 matmul peak measured here at the start. Training
counts only groups whose rewards differ (the others have zero advantage, so no gradient: thinktune skips
them, TRL computes them), each side from its own logged share of flat groups.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from workload import CASES, GROUP, MAX_NEW_TOKENS, PROMPTS_PER_STEP  # noqa: E402

from thinktune.environment import cpu_name, package_version  # noqa: E402

CONTENDED_CORES = 0.2
# glibc's own settings for what thinktune.allocator sets from inside: TRL gets the same chance.
KEEP_FREED_MEMORY = {
    "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=1073741824"
    ":glibc.malloc.arena_max=1"
}
# thinktune's memory savers, for the rows compared with TRL's gradient checkpointing: passes of at most 512 completion
# tokens (since 2026-12-06) lower the LoRA case's peak further (benchmarks/MEMORY_SAVERS.md), for some update time
# where completions run long (benchmarks/pass_size.py)
SAVERS = ("train.gradient_checkpointing=true", "train.optimizer=adamw_8bit", "grpo.micro_batch_tokens=512")
# TRL's configurations (label, dtype, environment), all run on smollm2-lora
TRL_CONFIGS = [
    ("trl-float32", "float32", None),
    ("trl-bfloat16", "bfloat16", None),
    ("trl-float32-keep-freed-memory", "float32", KEEP_FREED_MEMORY),
]


# --------------------------------------------------------------------------- machine
def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """Median GFLOP/s of a size x size matrix product on this CPU."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def cpu_jiffies() -> tuple[int, int]:
    """(busy, steal) clock ticks of the whole machine so far."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, steal


# --------------------------------------------------------------------------- one run
def run_worker(
    kind: str,
    case: str,
    scratch: Path,
    dtype: str = "float32",
    env: dict | None = None,
    flags: tuple[str, ...] = (),
    steps: int = 0,
) -> dict:
    """One worker process; ``flags``: ``fixed-length`` (every completion to the budget), ``savers`` (thinktune's
    memory savers, TRL's gradient checkpointing), ``autocast=MODE`` (thinktune's ``train.autocast``; without it the
    demo recipe's ``auto``); ``steps``: the case's own unless given."""
    out = scratch / f"result-{time.time_ns()}.json"
    command = [sys.executable, str(HERE / "bench.py"), "--worker", kind, case, str(scratch), dtype, str(out)]
    command += [",".join(flags), str(steps)]
    tick = os.sysconf("SC_CLK_TCK")
    busy0, steal0 = cpu_jiffies()
    children0 = os.times()
    start = time.perf_counter()
    with (scratch / "worker.log").open("a") as errors:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=errors, env={**os.environ, **(env or {})})
    elapsed = time.perf_counter() - start
    children1 = os.times()
    busy1, steal1 = cpu_jiffies()
    own = (children1.children_user - children0.children_user) + (children1.children_system - children0.children_system)
    result = json.loads(out.read_text())
    result["other_cores"] = max(0.0, (busy1 - busy0) / tick - own) / elapsed
    result["steal_cores"] = (steal1 - steal0) / tick / elapsed
    result["contended"] = result["other_cores"] + result["steal_cores"] > CONTENDED_CORES
    return result


def worker_main(kind: str, case: str, scratch: str, dtype: str, out: str, flags: str = "", steps: str = "0") -> None:
    import workers

    flags_ = flags.split(",")
    scratch_, fixed, savers = Path(scratch), "fixed-length" in flags_, "savers" in flags_
    if kind == "thinktune":  # dtype: the rollout.dtype of its sampler
        sampler = "model" if dtype == "float32" else dtype
        extra = (SAVERS if savers else ()) + tuple(f"train.{flag}" for flag in flags_ if flag.startswith("autocast="))
        result = workers.run_thinktune(case, scratch_, sampler, fixed, extra, int(steps))
    elif kind == "trl":
        result = workers.run_trl(case, scratch_, dtype, fixed, checkpointing=savers, steps=int(steps))
    else:
        result = workers.run_generate(kind.removeprefix("generate-"), scratch_)
    Path(out).write_text(json.dumps(result))


# --------------------------------------------------------------------------- summary
def summarise(runs: list[dict], finetune: str | None, peaks: dict) -> dict:
    """Measured steps (each run's first step is warm-up) of the uncontended runs, pooled."""
    clean = [r for r in runs if not r["contended"]] or runs
    steps = [s for r in clean for s in r["steps"][1:]]
    seconds = sum(s["seconds"] for s in steps)
    per_step = [s["seconds"] for s in steps]
    n = clean[0]["params"]["matmul"]
    train_factor = {"lora": 4, "full": 6, None: 0}[finetune]
    needed = sum(s["unique_prompt_tokens"] + s["generated_tokens"] for s in steps)
    learnable = sum((s["unique_prompt_tokens"] + s["generated_tokens"]) * s.get("rows_with_signal", 1) for s in steps)
    flops = 2 * n * needed + train_factor * n * learnable
    summary = {
        "runs": len(runs),
        "contended_runs": sum(r["contended"] for r in runs),
        "steps": len(steps),
        "median_s": statistics.median(per_step),
        "min_s": min(per_step),
        "max_s": max(per_step),
        "completions_per_s": sum(s["completions"] for s in steps) / seconds,
        "generated_tokens_per_s": sum(s["generated_tokens"] for s in steps) / seconds,
        "trained_tokens_per_s": sum(s["trained_tokens"] for s in steps) / seconds,
        "mean_completion_tokens": sum(s["generated_tokens"] for s in steps) / sum(s["completions"] for s in steps),
        "rows_with_signal": statistics.mean(s.get("rows_with_signal", 1) for s in steps),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "gflops_per_s": flops / seconds / 1e9,
        "dtype": clean[0]["dtype"],
        "run_step_seconds": [[round(s["seconds"], 2) for s in r["steps"]] for r in runs],  # warm-up step first
    }
    summary["mfu_bf16"] = summary["gflops_per_s"] / peaks["bfloat16"]
    summary["mfu_fp32"] = summary["gflops_per_s"] / peaks["float32"]
    if "seconds_rollout" in steps[0]:
        summary["rollout_share"] = sum(s["seconds_rollout"] for s in steps) / seconds
    return summary


def alternate(
    pairs: list[tuple], repeats: int, scratch: Path, log, fixed: bool = False, steps: int = 0
) -> dict[str, list[dict]]:
    """Run (label, kind, case, dtype, env, savers, autocast) entries in turn, ``repeats`` rounds: A B A B ...
    (``autocast``: thinktune's ``train.autocast``, or None for the recipe's own)."""
    results: dict[str, list[dict]] = {label: [] for label, *_ in pairs}
    for round_ in range(repeats):
        for label, kind, case, dtype, env, savers, autocast in pairs:
            flags = ("fixed-length",) * fixed + ("savers",) * savers + ((f"autocast={autocast}",) if autocast else ())
            result = run_worker(kind, case, scratch, dtype, env, flags, steps)
            results[label].append(result)
            secs = [f"{s['seconds']:.1f}" for s in result["steps"]]
            flag = "  CONTENDED" if result["contended"] else ""
            log(
                f"  round {round_ + 1} {label}: steps {' '.join(secs)} s, rss {result['peak_rss_mb']:.0f} MB, "
                f"other load {result['other_cores']:.2f} cores, steal {result['steal_cores']:.2f}{flag}"
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="smollm2-lora,smollm2-full,tiny-full,generate")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--steps", type=int, default=0, help="steps a run, the first one warm-up (default: each case's own)"
    )
    parser.add_argument("--out", default=str(HERE / "results.json"))
    parser.add_argument("--markdown", default=str(HERE / "RESULTS.md"))
    parser.add_argument(
        "--samplers",
        default="model,auto",
        help="thinktune rows by rollout.dtype, e.g. model,auto (auto: bfloat16 where this CPU runs it faster)",
    )
    parser.add_argument(
        "--trl",
        choices=[label for label, _, _ in TRL_CONFIGS],
        help="TRL's one configuration for every case (default: all of them on smollm2-lora, then the fastest there "
        "for the other cases, trl-float32 when that case does not run), e.g. to run smollm2-full alone against the "
        "best measured before",
    )
    parser.add_argument(
        "--configs",
        default="plain",
        help="plain, savers or plain,savers: savers adds thinktune with gradient checkpointing, the 8-bit optimizer "
        "and passes of at most 512 tokens against TRL with its gradient checkpointing",
    )
    parser.add_argument(
        "--autocast",
        default="auto",
        help="thinktune rows by train.autocast, e.g. auto,none (auto, the demo recipe's: the update's matmuls in "
        "bfloat16 where this CPU runs them faster, weights and AdamW float32, the mixed precision TRL's bf16 runs; "
        "none: float32)",
    )
    parser.add_argument(
        "--fixed-length",
        action="store_true",
        help="every completion runs to the budget on both sides (thinktune grpo.ignore_eos, TRL min_new_tokens), so "
        "generated tokens/s compare like for like; the generate case is left as it is",
    )
    args = parser.parse_args()
    unknown = sorted(set(args.configs.split(",")) - {"plain", "savers"})
    if unknown:
        parser.error(f"--configs: unknown {', '.join(unknown)} (plain, savers or plain,savers)")
    if unknown := sorted(set(args.autocast.split(",")) - {"none", "bf16", "auto"}):
        parser.error(f"--autocast: unknown {', '.join(unknown)} (none, bf16 or auto)")

    def log(line: str) -> None:
        print(line, flush=True)

    peaks = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
    log(f"matmul peak (2048^3): fp32 {peaks['float32']:.0f} GFLOP/s, bf16 {peaks['bfloat16']:.0f} GFLOP/s")
    report = {
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "peak_gflops": peaks,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "trl": package_version("trl"),
            "transformers": package_version("transformers"),
        },
        "workload": {
            "group": GROUP,
            "prompts_per_step": PROMPTS_PER_STEP,
            "max_new_tokens": MAX_NEW_TOKENS,
            "fixed_length": args.fixed_length,
        },
        "cases": {},
    }
    with tempfile.TemporaryDirectory(prefix="thinktune-bench-") as tmp:
        scratch = Path(tmp)
        for case in args.cases.split(","):
            log(f"case {case}")
            if case == "generate":
                if "smollm2-lora" not in report["cases"]:
                    run_worker("thinktune", "smollm2-lora", scratch)  # writes the prompts
                pairs = [
                    ("thinktune", "generate-thinktune", case, "float32", None, False, None),
                    ("hf-generate", "generate-hf", case, "float32", None, False, None),
                    ("hf-generate-keep-freed-memory", "generate-hf", case, "float32", KEEP_FREED_MEMORY, False, None),
                ]
                results = alternate(pairs, args.repeats, scratch, log)
                report["cases"][case] = {label: summarise(runs, None, peaks) for label, runs in results.items()}
                continue
            finetune = CASES[case].finetune
            if args.trl:
                trl = [next(config for config in TRL_CONFIGS if config[0] == args.trl)]
            elif case == "smollm2-lora":  # TRL's configurations; the fastest here is used for the other cases
                trl = TRL_CONFIGS
            else:
                trl = [report.get("trl_best", TRL_CONFIGS[0])]
            pairs = []
            for savers in [config == "savers" for config in args.configs.split(",")]:
                samplers, autocasts = dict.fromkeys(args.samplers.split(",")), dict.fromkeys(args.autocast.split(","))
                for sampler, autocast in itertools.product(samplers, autocasts):  # each row once
                    label = thinktune_label(sampler, savers, autocast)
                    pairs.append((label, "thinktune", case, sampler_dtype(sampler), None, savers, autocast))
                pairs += [(trl_label(name, savers), "trl", case, dtype, env, savers, None) for name, dtype, env in trl]
            results = alternate(pairs, args.repeats, scratch, log, args.fixed_length, args.steps)
            report["cases"][case] = {label: summarise(runs, finetune, peaks) for label, runs in results.items()}
            if case == "smollm2-lora" and "plain" in args.configs.split(","):
                report["trl_best"] = max(trl, key=lambda t: report["cases"][case][t[0]]["completions_per_s"])
    Path(args.out).write_text(json.dumps(report, indent=1))
    Path(args.markdown).write_text(results_markdown(report))
    log(results_markdown(report))


def thinktune_label(sampler: str, savers: bool = False, autocast: str = "auto") -> str:
    """A thinktune row's name: ``thinktune`` for the default sampler, else by its ``rollout.dtype``; ``-savers``
    with its memory savers (``SAVERS``); ``-autocast-MODE`` where ``train.autocast`` is not the demo recipe's auto.

    >>> thinktune_label("model"), thinktune_label("auto", autocast="none")
    ('thinktune', 'thinktune-rollout-auto-autocast-none')
    """
    name = "thinktune-savers" if savers else "thinktune"
    name = name if sampler == "model" else f"{name}-rollout-{sampler}"
    return name if autocast == "auto" else f"{name}-autocast-{autocast}"


def trl_label(label: str, checkpointing: bool) -> str:
    """A TRL row's name: its configuration's, ``-checkpointing`` with its gradient checkpointing on."""
    return f"{label}-checkpointing" if checkpointing else label


def same_kind(thinktune: str, trl: str) -> bool:
    """Whether a thinktune row is compared with a TRL row: savers with checkpointing, plain with plain."""
    return thinktune.startswith("thinktune-savers") == trl.endswith("-checkpointing")


def sampler_dtype(sampler: str) -> str:
    """The worker's dtype argument for a thinktune row (float32 is the policy's own: rollout.dtype model)."""
    return "float32" if sampler == "model" else sampler


def unequal_lengths(ours: dict, theirs: dict, tolerance: float = 1.25) -> str | None:
    """A caveat when the two rows' mean completion lengths differ by more than ``tolerance`` times: completions/s then
    compares unequal work, and generated tokens/s is the like-for-like figure.

    >>> unequal_lengths({"mean_completion_tokens": 60.2}, {"mean_completion_tokens": 128.0})[:46]
    'Mean completion lengths differ (60 against 128'
    >>> unequal_lengths({"mean_completion_tokens": 33.0}, {"mean_completion_tokens": 34.0}) is None
    True
    """
    a, b = ours["mean_completion_tokens"], theirs["mean_completion_tokens"]
    if max(a, b) <= tolerance * min(a, b):
        return None
    return (
        f"Mean completion lengths differ ({a:.0f} against {b:.0f} tokens): completions/s compares unequal work; "
        "generated tokens/s is the like-for-like figure (or run --fixed-length)."
    )


def results_markdown(report: dict) -> str:
    m = report["machine"]
    length = "every one of" if report["workload"].get("fixed_length") else "up to"
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` (benchmarks/bench.py). Machine: {m['cpu']}, {m['cores']} cores, "
        f"torch {m['torch']} ({m['torch_threads']} threads), transformers {m['transformers']}, TRL {m['trl']}.",
        f"Measured matmul peak (2048³): fp32 {m['peak_gflops']['float32']:.0f} GFLOP/s, "
        f"bf16 {m['peak_gflops']['bfloat16']:.0f} GFLOP/s.",
        "",
        f"Workload: the demo task, {report['workload']['prompts_per_step']} prompts x {report['workload']['group']} "
        f"completions per step, {length} {report['workload']['max_new_tokens']} completion tokens, temperature 1.0, "
        "same prompts and reward on both sides. Each run's first step is warm-up; medians pool the other steps "
        "of every uncontended run.",
        "",
    ]
    for case, systems in report["cases"].items():
        lines += [f"## {case}", ""]
        header = "| system | s/step median [min–max] | completions/s | generated tok/s | trained tok/s "
        header += "| mean completion tokens | rows with signal | peak RSS MB | MFU bf16 / fp32 | runs (contended) |"
        lines += [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for system, s in systems.items():
            lines.append(
                f"| {system} ({s['dtype']}) | {s['median_s']:.2f} [{s['min_s']:.2f}–{s['max_s']:.2f}] "
                f"| {s['completions_per_s']:.2f} | {s['generated_tokens_per_s']:.0f} | {s['trained_tokens_per_s']:.0f} "
                f"| {s['mean_completion_tokens']:.0f} | {100 * s['rows_with_signal']:.0f}% | {s['peak_rss_mb']:.0f} "
                f"| {100 * s['mfu_bf16']:.1f}% / {100 * s['mfu_fp32']:.1f}% | {s['runs']} ({s['contended_runs']}) |"
            )
        for name, ours in systems.items():
            others = {k: v for k, v in systems.items() if not k.startswith("thinktune") and same_kind(name, k)}
            if not name.startswith("thinktune") or not others:
                continue
            best_name, best = max(others.items(), key=lambda kv: kv[1]["completions_per_s"])
            speedup = ours["completions_per_s"] / best["completions_per_s"]
            lines += [
                "",
                f"{name} vs {best_name}: {speedup:.2f}x completions/s, "
                f"{ours['generated_tokens_per_s'] / best['generated_tokens_per_s']:.2f}x generated tokens/s, "
                f"peak RSS {ours['peak_rss_mb'] / best['peak_rss_mb']:.2f}x.",
            ]
            if caveat := unequal_lengths(ours, best):
                lines.append(caveat)
            if "rollout_share" in ours:
                lines.append(f"{name}'s rollout took {100 * ours['rollout_share']:.0f}% of its step time.")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(*sys.argv[2:9])
    else:
        main()
