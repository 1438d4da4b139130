"""Where a run ran: package versions and the machine, written to ``environment.json`` and shown in its report."""

from __future__ import annotations

import functools
import os
import platform
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

PACKAGES = ("thinktune", "torch", "transformers", "peft", "reasoning-gym", "math-verify")


def package_version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # bf16 matmuls fast (AMX), or supported but slower than float32


def cpu_flags(wanted=BF16_FLAGS) -> list[str]:
    """Which of ``wanted`` the CPU reports (``/proc/cpuinfo``): they decide whether bf16 autocast pays."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [flag for flag in wanted if flag in flags]


BF16_PAYS = 1.4  # the probe gave 3.4-3.7 on an AMD EPYC with avx512_bf16; some Intel CPUs with it alone give < 1


def bf16_pays(device: torch.device) -> bool:
    """Whether bfloat16 compute pays on ``device`` (the ``auto`` of ``rollout.dtype`` and ``train.autocast``): a
    CUDA device, or a CPU whose bfloat16 matmuls run at least :data:`BF16_PAYS` times as fast as float32 ones,
    measured now (:func:`bf16_matmul_speedup`; a margin well clear of timing noise)."""
    return device.type == "cuda" or (device.type == "cpu" and bf16_matmul_speedup() >= BF16_PAYS)


@functools.lru_cache(maxsize=1)
def matmul_probe() -> dict[str, float]:
    """Milliseconds a decode-shaped matmul (32 rows through a 1024 x 4096 weight) takes on this CPU in float32 and in
    bfloat16, timed now (about 0.1 s, once a process): the fastest of 15 calls, the one least disturbed by other
    work (the median of 7 put one AMD EPYC's bfloat16 speed-up anywhere from 3.1 to 3.9 in three runs). Their ratio
    is :func:`bf16_matmul_speedup`; recorded in every run's ``environment.json``, they set wall-clock figures of
    different machines side by side (machines of one kind differ: README, "The demo")."""
    generator = torch.Generator().manual_seed(0)
    rows, weight = torch.randn(32, 1024, generator=generator), torch.randn(4096, 1024, generator=generator)

    def milliseconds(dtype: torch.dtype) -> float:
        x, w = rows.to(dtype), weight.to(dtype)
        for _ in range(3):
            torch.nn.functional.linear(x, w)
        times = []
        for _ in range(15):
            began = time.perf_counter()
            torch.nn.functional.linear(x, w)
            times.append(time.perf_counter() - began)
        return 1000 * min(times)

    return {"float32": milliseconds(torch.float32), "bfloat16": milliseconds(torch.bfloat16)}


def bf16_matmul_speedup() -> float:
    """How many times faster :func:`matmul_probe`'s matmul runs on this CPU in bfloat16 than in float32. The CPU
    flags cannot say it: AMX units run bfloat16 several times faster, an AMD EPYC's avx512_bf16 3.4-3.9 times (this
    probe, README), and some Intel CPUs with avx512_bf16 alone slower than float32."""
    probe = matmul_probe()
    return probe["float32"] / probe["bfloat16"]


def describe(device: str, processes: int = 1) -> dict:
    """Versions, CPU, cores, torch threads, the training device, the training processes and the start time (UTC)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        **{package: package_version(package) for package in PACKAGES},
        "platform": platform.platform(terse=True),
        "cpu": cpu_name(),
        "cpu_bf16_flags": cpu_flags(),
        "cpu_bf16_matmul_speedup": round(bf16_matmul_speedup(), 2),
        "cpu_matmul_probe_ms": {dtype: round(ms, 3) for dtype, ms in matmul_probe().items()},
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "processes": processes,
        **({"gpu": gpu} if gpu else {}),
    }
