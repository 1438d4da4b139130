"""Where a run ran: package versions and the machine, written to ``environment.json`` and shown in its report."""

from __future__ import annotations

import os
import platform
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


def describe(device: str, processes: int = 1) -> dict:
    """Versions, CPU, cores, torch threads, the training device, the training processes and the start time (UTC)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        **{package: package_version(package) for package in PACKAGES},
        "platform": platform.platform(terse=True),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "processes": processes,
        **({"gpu": gpu} if gpu else {}),
    }
