"""The machine a result or a training run was measured on, read from the running system (never written by hand):
``machine_stamp()`` for JSON, ``describe_machine(stamp)`` for one line of a report."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_stamp() -> dict[str, Any]:
    """The machine a result was measured on, read from the running system (never written by hand)."""
    import torch

    stamp: dict[str, Any] = {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "amx_bf16": "amx_bf16" in cpu_flags(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        import transformers

        stamp["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - a core dependency
        pass
    if torch.cuda.is_available():
        stamp["cuda_device"] = torch.cuda.get_device_name()
        stamp["cuda"] = torch.version.cuda
    else:
        stamp["cuda_device"] = None
    return stamp


def describe_machine(stamp: dict[str, Any]) -> str:
    """One line for a report: ``Intel Xeon ..., 2 cores (AMX bf16), 2 torch threads, torch 2.x, no GPU``."""
    gpu = stamp.get("cuda_device") or "no GPU"
    amx = " (AMX bf16)" if stamp.get("amx_bf16") else ""
    return (f"{stamp['cpu']}, {stamp['cores']} cores{amx}, {stamp['torch_threads']} torch thread(s), "
            f"torch {stamp['torch']}, {gpu}")
