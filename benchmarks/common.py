"""What every benchmark shares: the machine stamp read from the running system, shared arguments, and writing a
result as JSON plus a Markdown table (so ``docs/results.md`` can be regenerated from ``benchmarks/results/``).

    from benchmarks.common import add_common_args, machine_stamp, write_results
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmcompress.machine import describe_machine, machine_stamp  # noqa: F401  (re-exported to the benchmarks)


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
