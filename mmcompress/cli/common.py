"""Helpers shared by subcommands: reading inputs, parsing ``--set key=value`` overrides."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputFileError


def read_text(source: str | None) -> str:
    """Text from a file path or ``-`` (stdin); a clear error for missing, unreadable or non-UTF-8 input."""
    if source in (None, "-"):
        data = sys.stdin.buffer.read()
        where = "standard input"
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            raise InputFileError(f"{path} is a folder, not a text file")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InputFileError(f"input file not found: {path}") from None
        except OSError as e:
            raise InputFileError(f"cannot read {path}: {e.strerror or e}") from None
        where = str(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputFileError(f"{where} is not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r}); "
                             "convert it, e.g. with iconv -t UTF-8") from None


def looks_like_literal_text(arg: str) -> bool:
    """A positional argument that is not a file but reads as a prompt (has spaces or an <image> marker)."""
    try:
        exists = Path(arg).expanduser().exists()
    except (OSError, ValueError):  # longer than a file name may be, or a NUL byte: not a file
        exists = False
    return not exists and (any(c.isspace() for c in arg) or "<image>" in arg)


def check_output_path(path: str | None) -> None:
    """Refuse an output file that cannot be written (missing folder, a folder, a read-only file) before any work."""
    if path in (None, "-"):
        return
    target = Path(path).expanduser()
    if target.is_dir():
        raise InputFileError(f"output {target} is a folder; give a file name, e.g. {target / 'out.jsonl'}")
    if not target.parent.is_dir():
        raise InputFileError(f"cannot write {target}: the folder {target.parent} does not exist")
    existed = target.exists()
    try:
        with open(target, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise InputFileError(f"cannot write {target}: {e.strerror or e}") from None
    if not existed:
        target.unlink(missing_ok=True)


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["unit=phrase", "seed=3"]`` -> ``{"unit": "phrase", "seed": 3}`` (values parsed as YAML scalars)."""
    import yaml

    from ..yaml_io import load_yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = load_yaml(value) if value.strip() else None
        except yaml.YAMLError as e:
            problem = str(getattr(e, "problem", None) or e).splitlines()[0]
            raise ConfigError(f"--set {pair!r}: the value is not valid YAML ({problem}); quote it, e.g. "
                              f"--set '{key.strip()}=\"{value}\"'") from None
    return out


# ------------------------------------------------------------------------------------ flags every command spells alike
def add_output_flag(p, help: str, *, default: str | None = None, old: str | None = None) -> None:
    """``--output`` / ``-o`` (``args.output``); ``old`` is a former spelling, still accepted but not shown."""
    import argparse

    p.add_argument("--output", "-o", default=default, help=help)
    if old:
        p.add_argument(old, dest="output", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_run_flags(p) -> None:
    """``--quiet`` (no statistics on stderr) and ``--no-progress`` (no progress bars)."""
    p.add_argument("--quiet", action="store_true", help="print no statistics line on stderr")
    p.add_argument("--no-progress", action="store_true", help="show no progress bar")


def add_model_flags(p) -> None:
    """``--device`` and ``--model-kwargs`` for commands that load models."""
    p.add_argument("--device", help="where models run: cpu, cuda, cuda:1, mps... (default: the method's, usually auto)")
    p.add_argument("--model-kwargs", type=parse_model_kwargs, metavar="JSON",
                   help="JSON object passed to from_pretrained of every model the method loads, "
                        "e.g. '{\"device_map\": \"auto\", \"attn_implementation\": \"sdpa\"}'")


def parse_model_kwargs(text: str) -> dict[str, Any]:
    import argparse
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def method_overrides(args) -> dict[str, Any]:
    """Config overrides from ``--set``, ``--model``, ``--device`` and ``--model-kwargs`` (a method without such a
    field rejects it with a ConfigError naming its fields, rather than ignoring it)."""
    out = parse_overrides(getattr(args, "overrides", None))
    if getattr(args, "model", None):
        out["model"] = args.model
    out.update({k: getattr(args, k) for k in ("device", "model_kwargs") if getattr(args, k, None) is not None})
    return out


def show_progress(args, default: bool) -> bool:
    return default and not getattr(args, "no_progress", False)
