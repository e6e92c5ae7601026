"""What every benchmark shares: the machine stamp read from the running system, shared arguments, and writing a
result as JSON plus a Markdown table (so ``docs/results.md`` can be regenerated from ``benchmarks/results/``).

    from benchmarks.common import add_common_args, machine_stamp, write_results
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
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


def machine_line() -> str:
    """The one line a report gives the machine: :func:`describe_machine` of :func:`machine_stamp`."""
    return describe_machine(machine_stamp())


def command_line() -> str:
    """The command that produced a result, as it can be pasted back into a shell."""
    return "PYTHONPATH=. python " + " ".join(shlex.quote(a) for a in sys.argv)


def add_common_args(parser: argparse.ArgumentParser, out: str) -> argparse.ArgumentParser:
    """``--out`` (path prefix of the ``.json`` / ``.md`` pair), ``--threads`` and ``--seed``."""
    parser.add_argument("--out", default=out, help="path prefix of the .json and .md results (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def apply_common_args(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of dict rows; floats get 4 significant digits."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(out: str | Path, title: str, rows: Sequence[dict[str, Any]], *, columns: Sequence[str] | None = None,
                  notes: str = "", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``<out>.json`` (machine, command, rows, extra) and ``<out>.md`` (title, machine, command, table, notes)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = machine_stamp()
    data = {"title": title, "machine": stamp, "command": command_line(), "rows": list(rows), **(extra or {})}
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    md = [f"# {title}", "", f"Machine: {describe_machine(stamp)}.", "", f"Command: `{data['command']}`", "",
          markdown_table(rows, columns)]
    if notes:
        md += ["", notes]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    return data
